#!/usr/bin/env bash
# Installs what the mod_wsgi end-to-end tests need: Apache and its headers from
# Debian, and a virtual environment with mod_wsgi, the runtime dependencies and
# this project.
#
# The venv is made from Debian's /usr/bin/python3, not the pyenv one: the
# daemon processes run as www-data, which cannot read /root/.pyenv (WSGI0036).
# It lives under /opt so that www-data can read it. The project itself is
# reinstalled on every run because its code changes between runs; everything
# else is skipped when already in place, so a warm run takes a few seconds.
#
# Usage: bash .ci/install-modwsgi.sh   (as root; TXSCOPE_MODWSGI_VENV overrides
# the venv path, and tests/modwsgi.py reads the same variable)
set -euo pipefail

VENV="${TXSCOPE_MODWSGI_VENV:-/opt/txscope-modwsgi-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# apache2-dev alone has no server binary; python3-dev and the MariaDB headers
# are for compiling mod_wsgi and mysqlclient against Debian's Python.
APT_PACKAGES=(apache2-bin apache2-dev python3-venv python3-dev
              libmariadb-dev pkg-config build-essential)

# Pinned to the versions FACTS.md was verified with; the stamp file records
# this list so that a change here triggers a reinstall.
PIP_PACKAGES=(mod_wsgi "web.py==0.76" "SQLObject==3.14.0" "psycopg[binary]"
              psycopg2-binary mysqlclient PyMySQL dogpile.cache prometheus_client redis)
STAMP="$VENV/.txscope-requirements"

missing_apt_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null \
            | grep -q '^install ok installed$' || echo "$pkg"
    done
}

install_apt_packages() {
    local missing
    missing="$(missing_apt_packages)"
    [ -z "$missing" ] && return
    echo "install-modwsgi: apt-get install $missing" | tr '\n' ' '; echo
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq $missing >/dev/null
}

venv_is_current() {
    [ -x "$VENV/bin/mod_wsgi-express" ] \
        && [ -f "$STAMP" ] \
        && [ "$(cat "$STAMP")" = "${PIP_PACKAGES[*]}" ] \
        && "$VENV/bin/python" -c 'import mod_wsgi.server' 2>/dev/null
}

venv_works() {
    [ -x "$VENV/bin/mod_wsgi-express" ] && "$VENV/bin/python" -c 'import mod_wsgi.server' 2>/dev/null
}

install_venv() {
    if venv_is_current; then
        return
    fi
    if venv_works; then
        # Only the list changed: install it on top rather than deleting a venv
        # that a running end-to-end test may be using.  A package dropped from
        # the list stays installed until the venv is removed by hand.
        echo "install-modwsgi: updating $VENV"
        "$VENV/bin/pip" install -q --no-cache-dir "${PIP_PACKAGES[@]}"
        echo "${PIP_PACKAGES[*]}" > "$STAMP"
        return
    fi
    echo "install-modwsgi: building $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    # --no-cache-dir: a cached mod_wsgi wheel may have been built against the
    # pyenv Python and would not load in Debian's.
    "$VENV/bin/pip" install -q --no-cache-dir --upgrade pip setuptools wheel
    "$VENV/bin/pip" install -q --no-cache-dir "${PIP_PACKAGES[@]}"
    echo "${PIP_PACKAGES[*]}" > "$STAMP"
}

install_project() {
    # Non-editable: an editable install would point www-data at the work tree,
    # which may sit under a folder it cannot read.
    "$VENV/bin/pip" install -q --no-cache-dir --no-deps --no-build-isolation \
        --force-reinstall "$REPO"
}

install_apt_packages
install_venv
install_project
chmod -R a+rX "$VENV"
echo "install-modwsgi: ready: $VENV/bin/mod_wsgi-express ($("$VENV/bin/mod_wsgi-express" module-location))"
