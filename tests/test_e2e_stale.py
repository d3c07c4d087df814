"""The bug seen and cured under mod_wsgi: txscope-check against 3 processes x 4 threads.

Without the processor (``TXSCOPE_ENABLED=0``, the stale recipe) the cookbook
serves rows from a cache another process never expires, and the checker must
say so: that proves it can see the bug.  With the processor, the same traffic
must find no stale read, no leaked crash write and no lost write.
"""

import pytest

from e2e_support import KINDS, PROCESSES, checker, cookbook, prepare, record
from modwsgi import www_data_dir

pytestmark = pytest.mark.e2e

# 12 clients x 3 rows x (24 rounds x (1 write answer + 5 reads) + 4 crashes x 5 reads) = 5,904 checks.
CHECK = ["--clients", "12", "--rows-per-client", "3", "--rounds", "24", "--reads", "5", "--crash-every", "5"]
MIN_CHECKS = 5000
PROBLEMS = ("stale_reads", "leaked_crash_writes", "lost_writes")


@pytest.fixture(scope="module", params=KINDS)
def database(request):
    with www_data_dir() as data:
        yield prepare(request.param, data)


def check(database, enabled):
    with cookbook(database, enabled=enabled) as app:
        numbers = checker(app.url, *CHECK)
    record("stale_reads", f"{database.kind}, processor {'on' if enabled else 'off'}",
           {k: numbers[k] for k in ("checks", *PROBLEMS, "crash_writes", "http_errors", "workers_seen", "duration_s")})
    return numbers


def test_without_the_processor_the_checker_sees_stale_reads(database):
    numbers = check(database, enabled=False)
    assert numbers["workers_seen"] == PROCESSES, numbers["report"]
    assert numbers["stale_reads"] > 0, numbers["report"]


def test_with_the_processor_no_read_is_stale_and_no_write_is_lost_or_leaked(database):
    numbers = check(database, enabled=True)
    assert numbers["checks"] >= MIN_CHECKS, numbers["report"]
    assert numbers["workers_seen"] == PROCESSES, numbers["report"]
    assert {k: numbers[k] for k in PROBLEMS} == dict.fromkeys(PROBLEMS, 0), numbers["report"]
    assert numbers["http_errors"] == 0, numbers["report"]
    assert numbers["exit_status"] == 0, numbers["report"]
