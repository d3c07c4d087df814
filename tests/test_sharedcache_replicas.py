"""The shared cache (cache=) and read replicas (replicas=) together, on a private primary and a replica.

The replica applies the primary's commits late (``recovery_min_apply_delay``,
or paused with ``pg_wal_replay_pause()`` where a test needs it to lag for
sure), so a read that a replica answers with an old row is visible.
"""

from __future__ import annotations

import pytest
import web
from sqlobject import connectionForURI

from models import User, create_tables
from pg_cluster import PgCluster
from test_sharedcache import settled
from webapps import make_app
from webpy_txscope import scope_options, txscope


@pytest.fixture(scope="module")
def cluster():
    with PgCluster(replicas=1) as running:
        create_tables(connectionForURI(running.primary.uri()))
        yield running


@pytest.fixture
def fresh(cluster):
    """Three users, on the primary and replayed by the replica; the replica replaying without delay."""
    replica = cluster.replicas[0]
    cluster.resume(replica)
    cluster.set_apply_delay(replica, "0")
    cluster.primary.sql("DELETE FROM users")
    for i in (1, 2, 3):
        cluster.primary.sql("INSERT INTO users (id, name, fullname, password) VALUES (%s, %s, %s, 'x')",
                            i, f"user{i}", f"Full {i}")
    cluster.primary.sql("SELECT setval('users_id_seq', 3)")
    cluster.wait_replayed()
    for node in (cluster.primary, replica):
        connectionForURI(node.uri()).close()
    return cluster


def cached_routed(cluster, spec, **options):
    options.setdefault("replica_wait", 0.3)
    scope = txscope(cluster.primary.uri(), replicas=[r.uri() for r in cluster.replicas], cache=spec, **options)
    settled(scope.manager.cache)
    return scope


def show(user_id):
    return User.get(int(user_id)).fullname


def rename(user_id):
    User.get(int(user_id)).fullname = web.input().fullname
    return "renamed"


@scope_options(replica=False)
def rename_on_primary(user_id):
    return rename(user_id)


def app_for(scope):
    return make_app({"/user/(\\d+)": show, "/rename/(\\d+)": rename, "/rename-primary/(\\d+)": rename_on_primary},
                    scope)


# -- writes through any scope replace the tokens --------------------------------------------------


def test_a_get_that_writes_on_the_primary_replaces_the_tokens(fresh, tmp_path):
    app = app_for(cached_routed(fresh, f"local:{tmp_path / 'tokens'}"))
    assert app.request("/user/1", method="POST").data == b"Full 1"  # on the primary: stored
    assert app.request("/rename-primary/1?fullname=new").data == b"renamed"
    assert fresh.primary.sql("SELECT fullname FROM users WHERE id = 1") == [("new",)]
    assert app.request("/user/1", method="POST").data == b"new"
