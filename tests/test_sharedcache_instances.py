"""Instances served from the shared cache are copies, each transaction's own, equal to what get() builds.

A current entry keeps, besides its rows, what each row's instance holds once
SQLObject converted it (its id and column values).  A later transaction
copies instances from it instead of building them: only the per-instance
parts (sqlmeta, lock, validator state, pending values) are made.  These tests
pin what must not differ from an instance SQLObject builds, and what must
never be shared between transactions, on every database.
"""

from __future__ import annotations

import pytest
from sqlobject import JSONCol, SQLObject, StringCol, sqlhub

from models import User
from test_sharedcache import make_cache, tx
from webpy_txscope import _driver, sharedcache


def entry_of_get(cache, user_id):
    key = ("get", "users", tuple(col.dbName for col in User.sqlmeta.columnList), int, user_id)
    return cache._entries[key]


def built_and_copied(cache, scope, backend, bound):
    """User 1 as a plain transaction builds it, and as a warm cached one copies it.

    *bound*: fetched through the hub, as a request does (the transaction is
    the thread's connection), or with ``connection=`` given.
    """
    warm = tx(cache, scope, backend)
    User.get(1, connection=warm)
    warm.commit(close=True)
    plain = scope.connection.transaction()
    t = tx(cache, scope, backend)
    if bound:
        sqlhub.threadConnection = plain
        built = User.get(1)
        sqlhub.threadConnection = t
        copied = User.get(1)
    else:
        built = User.get(1, connection=plain)
        copied = User.get(1, connection=t)
    return built, copied, t, plain


@pytest.mark.parametrize("bound", [False, True], ids=["explicit-connection", "hub-connection"])
def test_a_copied_instance_holds_what_a_built_one_holds(scope, backend, tmp_path, bound):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    built, copied, t, plain = built_and_copied(cache, scope, backend, bound)
    try:
        assert t._raw is None, "the copy reached the database"
        assert isinstance(entry_of_get(cache, 1).values, list), "the instance was built, not copied"
        assert type(copied) is User and copied.id == built.id == 1
        assert sorted(copied.__dict__) == sorted(built.__dict__)
        for name in _driver.clonable(User):
            assert getattr(copied, name) == getattr(built, name) and type(getattr(copied, name)) is \
                type(getattr(built, name)), name
        assert sorted(copied.sqlmeta.__dict__) == sorted(built.sqlmeta.__dict__)
        assert copied.sqlmeta.dirty is built.sqlmeta.dirty is False
        assert copied.sqlmeta._perConnection is built.sqlmeta._perConnection
        assert copied.sqlmeta.instance.id == 1 and copied.sqlmeta.instance.fullname == "Full 1"
        assert sorted(copied._SO_validatorState.__dict__) == sorted(built._SO_validatorState.__dict__)
        assert copied._SO_validatorState.soObject.name == "user1"
        assert copied._SO_createValues == {} and type(copied._SO_writeLock) is type(built._SO_writeLock)
        assert copied._connection is t and built._connection is (t if bound else plain)  # bound: both follow the hub
        assert (copied.fullname, copied.name) == ("Full 1", "user1")
    finally:
        t.commit(close=True)
        plain.rollback()
        sqlhub.threadingLocal.__dict__.pop("connection", None)


def test_copies_are_new_in_each_transaction_and_one_per_row_within_it(scope, backend, tmp_path):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    seen = []
    for _ in range(3):
        t = tx(cache, scope, backend)
        users = list(User.select(orderBy="id", connection=t))
        assert [u.fullname for u in users] == ["Full 1", "Full 2", "Full 3"]
        assert list(User.select(orderBy="id", connection=t)) == users
        assert all(a is b for a, b in zip(User.select(orderBy="id", connection=t), users))
        assert User.get(2, connection=t) is users[1]
        seen.append(users)
        t.commit(close=True)
    first, second, third = seen
    assert not any(a is b for a, b in zip(second, third)), "two transactions share an instance"
    assert not any(a._SO_createValues is b._SO_createValues or a.sqlmeta is b.sqlmeta
                   or a._SO_writeLock is b._SO_writeLock for a, b in zip(second, third))


def test_a_change_to_a_copy_never_reaches_another_transaction(scope, backend, tmp_path):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    for _ in range(2):  # the second transaction's instances are copies
        t = tx(cache, scope, backend)
        users = list(User.select(orderBy="id", connection=t))
        t.commit(close=True)
    t = tx(cache, scope, backend)
    users = list(User.select(orderBy="id", connection=t))
    users[1].sqlmeta.dirty = True  # as a lazyUpdate class leaves an instance it has not written yet
    users[1]._SO_val_fullname = "not written"
    users[2]._SO_val_fullname = "refreshed by the next select, as get() refreshes it"
    again = list(User.select(orderBy="id", connection=t))  # a hit
    assert again[1] is users[1] and again[1].fullname == "not written"
    assert again[2] is users[2] and again[2].fullname == "Full 3"
    users[0].fullname = "rolled back"
    t.rollback()
    t = tx(cache, scope, backend)
    assert [u.fullname for u in User.select(orderBy="id", connection=t)] == ["Full 1", "Full 2", "Full 3"]
    assert User.get(2, connection=t).fullname == "Full 2"
    user = User.get(3, connection=t)
    user.fullname = "committed"
    t.commit(close=True)
    t = tx(cache, scope, backend)
    assert [u.fullname for u in User.select(orderBy="id", connection=t)] == ["Full 1", "Full 2", "committed"]
    t.commit(close=True)
    assert backend.sql("SELECT fullname FROM users WHERE id = 3")[0][0] == "committed"


class InitUser(SQLObject):
    """The cookbook's table, through a class that computes an attribute in its own ``_init``."""

    class sqlmeta:
        table = "users"

    name = StringCol(length=40, alternateID=True)
    fullname = StringCol(length=200)
    password = StringCol(length=200)
    inits = 0

    def _init(self, *args, **kw):
        SQLObject._init(self, *args, **kw)
        type(self).inits += 1
        self.shout = self.fullname.upper()


def test_a_class_with_its_own_init_is_built_as_sqlobject_builds_it(scope, backend, tmp_path):
    assert _driver.clonable(InitUser) is None and _driver.clonable(User) is not None
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    InitUser.inits = 0
    for _ in range(3):
        t = tx(cache, scope, backend)
        assert [u.shout for u in InitUser.select(orderBy="id", connection=t)] == ["FULL 1", "FULL 2", "FULL 3"]
        assert InitUser.get(1, connection=t).shout == "FULL 1"
        t.commit(close=True)
    assert InitUser.inits == 9, "an instance was copied past the class's own _init"


class Doc(SQLObject):
    class sqlmeta:
        table = "txs_docs"

    data = JSONCol()


@pytest.fixture
def docs(scope):
    Doc.dropTable(ifExists=True, connection=scope.connection)
    Doc.createTable(connection=scope.connection)
    for i in range(1, 3):
        Doc(data={"n": i}, connection=scope.connection)
    yield
    Doc.dropTable(ifExists=True, connection=scope.connection)


def test_a_value_that_could_be_changed_in_place_is_never_shared(scope, backend, tmp_path, docs):
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    for _ in range(2):
        t = tx(cache, scope, backend)
        mine = list(Doc.select(orderBy="id", connection=t))
        mine[0].data["n"] = "changed in place"  # no write: this transaction's object only
        Doc.get(2, connection=t).data["n"] = "changed in place"
        t.commit(close=True)
    t = tx(cache, scope, backend)
    assert [d.data for d in Doc.select(orderBy="id", connection=t)] == [{"n": 1}, {"n": 2}]
    assert Doc.get(2, connection=t).data == {"n": 2}
    t.commit(close=True)


def test_a_select_reads_the_store_once_per_transaction_hit_or_miss(scope, backend, tmp_path):
    """A miss builds its instances from the rows it read: it looks for no Model.get entry per row."""
    cache = make_cache(f"local:{tmp_path / 'tokens'}")
    reads = []
    read = cache.store.read
    cache.store.read = lambda tables: reads.append(tuple(tables)) or read(tables)
    before = dict(sharedcache.counts)
    try:
        for _ in range(2):  # a miss, then a hit
            t = tx(cache, scope, backend)
            assert [u.fullname for u in User.select(orderBy="id", connection=t)] == ["Full 1", "Full 2", "Full 3"]
            t.commit(close=True)
    finally:
        del cache.store.read
    assert reads == [("users", "users#select", "*")] * 2
    assert [sharedcache.counts[k] - before[k] for k in ("cache_misses", "cache_hits")] == [1, 1]
