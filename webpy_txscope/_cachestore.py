"""Where the shared cache keeps its per-table generation tokens and pending-write leases.

Two stores with one interface:

* :class:`LocalStore` (``cache="local"``): a small file mapped into memory by
  every process of one host.  A table hashes to a slot holding its token and a
  few writer leases; a ``flock`` lock (released by the kernel when a process
  dies) serializes access.  Leases run on ``CLOCK_MONOTONIC``, which every
  process of a host shares.
* :class:`RedisStore` (``cache="redis://host:6379/0"``): one key per table for
  the token, one sorted set per table for the leases, each operation one Lua
  script, so one round trip.  Leases run on the Redis server's clock, the only
  clock involved.

A token is 16 random bytes, never a counter or a time: a store that was
flushed or restarted hands out tokens no old entry was tagged with.  Right
after a store is (re)created, every table counts as pending for one lease: a
writer whose lease was lost with the old store may still be between its
COMMIT and its second replacement.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
import zlib

from ._errors import ConfigurationError

log = logging.getLogger("webpy_txscope")

#: Every read also reads this pseudo-table: a write whose tables are unknown
#: (DDL, a statement that could not be parsed) replaces its token.
ALL_TABLES = "*"


class StoreUnavailable(Exception):
    """The shared store could not be reached or answered in time."""


class LocalStore:
    """Tokens and leases in a memory-mapped file shared by the processes of one host."""

    MAGIC = b"TXSCOPE1"
    SLOTS = 4096
    CELLS = 4  # writer leases per slot; a fifth concurrent writer shares the longest one
    _HEADER = struct.Struct("<8sq")  # magic, created (monotonic ns)
    _CELL = struct.Struct("<qq")  # writer id, lease end (monotonic ns)
    _SLOT = 16 + CELLS * _CELL.size
    _WHOLE = struct.Struct("<16s" + "qq" * CELLS)  # a slot: its token, then its cells
    _NO_LEASES = (0,) * (2 * CELLS)

    def __init__(self, path: str | None = None, lease: float = 10.0):
        if path is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            path = os.path.join(base, f"webpy_txscope-{os.getuid()}.cache")
        self.path = path
        self.lease_ns = int(lease * 1e9)
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        # flock, never POSIX record locks (lockf): those belong to a process, and the
        # kernel's deadlock detection then sees a cycle between two processes that
        # each hold one lock in one thread and wait in another; it fails the other
        # lock (mod_wsgi's accept mutex: "Resource deadlock avoided", the daemon quits).
        self._fd, self._map, self._ino = self._open()
        os.register_at_fork(after_in_child=self._after_fork)

    def __repr__(self) -> str:
        return f"LocalStore({self.path!r})"

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # it may have been held by another thread at fork
        # A flock belongs to the open file, which a child shares with its parent:
        # the child opens its own, so that the two exclude each other.
        inherited = self._fd, self._map
        self._fd, self._map, self._ino = self._open()
        inherited[1].close()
        os.close(inherited[0])

    def _open(self) -> tuple[int, mmap.mmap, tuple[int, int]]:
        """Map the file, making and filling it first if it is new."""
        size = self._HEADER.size + self.SLOTS * self._SLOT
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                st = os.fstat(fd)
                if st.st_size < size:
                    os.ftruncate(fd, size)
                mapped = mmap.mmap(fd, size)
                magic, _ = self._HEADER.unpack_from(mapped, 0)
                if magic != self.MAGIC:
                    # A new store: random tokens everywhere, and a warm-up lease.
                    mapped[:] = bytes(size)
                    self._HEADER.pack_into(mapped, 0, self.MAGIC, time.monotonic_ns())
                    for slot in range(self.SLOTS):
                        offset = self._HEADER.size + slot * self._SLOT
                        mapped[offset:offset + 16] = os.urandom(16)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        return fd, mapped, (st.st_dev, st.st_ino)

    def _checked(self) -> None:
        """Reopen the file if it was removed or replaced: a stale mapping would see no writes.

        Either leaves our file with no name (``st_nlink`` 0), which an
        ``fstat`` of the open file tells without looking the path up.
        """
        if os.fstat(self._fd).st_nlink == 0:
            old_fd, old_map = self._fd, self._map
            self._fd, self._map, self._ino = self._open()
            old_map.close()
            os.close(old_fd)

    def _slot(self, table: str) -> int:
        offset = self._offsets.get(table)
        if offset is None:
            offset = self._HEADER.size + (zlib.crc32(table.encode()) % self.SLOTS) * self._SLOT
            if len(self._offsets) < 100_000:  # one per row read by id: keep the memo bounded
                self._offsets[table] = offset
        return offset

    def read(self, tables) -> tuple[tuple[bytes, ...], bool]:
        """The current tokens of *tables*, and whether a write to any of them is pending."""
        slot, whole = self._slot, self._WHOLE.unpack_from
        with self._lock:
            self._checked()
            fd, m = self._fd, self._map
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                _, created = self._HEADER.unpack_from(m, 0)
                slots = [whole(m, slot(table)) for table in tables]
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        now = time.monotonic_ns()
        pending = now < created + self.lease_ns
        if not pending:
            for cells in slots:
                if cells[1:] != self._NO_LEASES:
                    pending = any(cells[at] and cells[at + 1] > now for at in range(1, 2 * self.CELLS, 2))
                    if pending:
                        break
        return tuple(cells[0] for cells in slots), pending

    def begin_write(self, tables, writer: int) -> None:
        """Lease a pending marker on *tables* for *writer* and replace their tokens."""
        self._write(tables, writer, True)

    def end_write(self, tables, writer: int) -> None:
        """Replace the tokens of *tables* again and drop *writer*'s leases."""
        self._write(tables, writer, False)

    def _write(self, tables, writer: int, begin: bool) -> None:
        now = time.monotonic_ns()
        until = now + self.lease_ns
        with self._lock:
            self._checked()
            fd, m = self._fd, self._map
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                for offset in sorted({self._slot(table) for table in tables}):
                    m[offset:offset + 16] = os.urandom(16)
                    cells = [offset + 16 + cell * self._CELL.size for cell in range(self.CELLS)]
                    if begin:
                        self._lease(m, cells, writer, now, until)
                    else:
                        for at in cells:
                            if self._CELL.unpack_from(m, at)[0] == writer:
                                self._CELL.pack_into(m, at, 0, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _lease(self, m, cells, writer: int, now: int, until: int) -> None:
        longest: tuple[int, int] | None = None
        for at in cells:
            owner, end = self._CELL.unpack_from(m, at)
            if owner == writer or not owner or end <= now:
                self._CELL.pack_into(m, at, writer, until)
                return
            if longest is None or end > longest[1]:
                longest = (at, end)
        # Every cell holds a live lease: take over the longest one, extended.
        # Its owner's end_write then no longer clears it, so the table stays
        # pending until we end too: longer than needed, never shorter.
        assert longest is not None  # there are CELLS > 0 cells
        at, end = longest
        self._CELL.pack_into(m, at, writer, max(end, until))


#: Seconds a token key lives in Redis: one per row read by id, so they must not
#: pile up.  An expired token only makes the entries tagged with it stale.
TOKEN_TTL = 86_400

# KEYS: the token keys, then the lease keys, then the epoch and warm-up keys.
# ARGV: how many tables, the lease in ms, a random token for keys that are missing.
_READ = f"""
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pending = 0
if redis.call('EXISTS', KEYS[2 * n + 1]) == 0 then
  redis.call('SET', KEYS[2 * n + 1], ARGV[3])
  redis.call('SET', KEYS[2 * n + 2], '1', 'PX', ARGV[2])
end
if redis.call('EXISTS', KEYS[2 * n + 2]) == 1 then pending = 1 end
local out = {{}}
for i = 1, n do
  local token = redis.call('GET', KEYS[i])
  if not token then
    token = ARGV[3] .. ':' .. i
    redis.call('SET', KEYS[i], token, 'EX', {TOKEN_TTL})
  end
  out[i] = token
  if redis.call('ZCOUNT', KEYS[n + i], now, '+inf') > 0 then pending = 1 end
end
out[n + 1] = pending
return out
"""

# KEYS: the token keys, then the lease keys.  ARGV: how many tables, the lease
# in ms, the writer, a new random token, 1 to begin (lease) or 0 to end.
_WRITE = f"""
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[4] .. ':' .. i, 'EX', {TOKEN_TTL})
  if ARGV[5] == '1' then
    redis.call('ZADD', KEYS[n + i], now + lease, ARGV[3])
    redis.call('PEXPIRE', KEYS[n + i], 2 * lease)
  else
    redis.call('ZREM', KEYS[n + i], ARGV[3])
  end
end
return n
"""


class RedisStore:
    """Tokens and leases in Redis, shared by every host that uses the same server and database."""

    def __init__(self, url: str, lease: float = 10.0, timeout: float = 0.5, prefix: str = "txscope"):
        try:
            import redis
        except ImportError:
            raise ConfigurationError("cache='redis://...' needs the redis package: pip install redis") from None
        self.url = url
        self.lease_ms = int(lease * 1000)
        self.prefix = prefix
        self._errors = (redis.RedisError, OSError)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        except ValueError as e:
            raise ConfigurationError(f"cache={_masked(url)!r} is not a Redis URL: {e}") from None
        self._read = self._client.register_script(_READ)
        self._write = self._client.register_script(_WRITE)
        # After a failure, reads skip the store for a second instead of each
        # waiting for a timeout (they go to the database meanwhile); writes
        # always try, as they must not pretend to have invalidated.
        self._retry_at = 0.0

    def _down(self, error: Exception) -> StoreUnavailable:
        if not self._retry_at:
            log.warning("cache store %s is unreachable (%s); reads go to the database, writes fail",
                        _masked(self.url), type(error).__name__)
        self._retry_at = time.monotonic() + 1.0
        return StoreUnavailable(f"the cache store {_masked(self.url)} is unreachable: {type(error).__name__}")

    def _up(self) -> None:
        if self._retry_at:
            self._retry_at = 0.0
            log.warning("cache store %s is reachable again", _masked(self.url))

    def __repr__(self) -> str:
        return f"RedisStore({_masked(self.url)!r})"

    def _keys(self, tables) -> list[str]:
        p = self.prefix
        return [f"{p}:t:{table}" for table in tables] + [f"{p}:p:{table}" for table in tables]

    def read(self, tables) -> tuple[tuple[bytes, ...], bool]:
        if self._retry_at and time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"the cache store {_masked(self.url)} is unreachable")
        keys = self._keys(tables) + [f"{self.prefix}:epoch", f"{self.prefix}:warm"]
        try:
            out = self._read(keys, [len(tables), self.lease_ms, os.urandom(16).hex()])
        except self._errors as e:
            raise self._down(e) from None
        if self._retry_at:
            self._up()
        return tuple(out[:-1]), bool(out[-1])

    def begin_write(self, tables, writer: int) -> None:
        self._change(tables, writer, "1")

    def end_write(self, tables, writer: int) -> None:
        self._change(tables, writer, "0")

    def _change(self, tables, writer: int, begin: str) -> None:
        tables = sorted(set(tables))
        try:
            self._write(self._keys(tables), [len(tables), self.lease_ms, writer, os.urandom(16).hex(), begin])
        except self._errors as e:
            raise self._down(e) from None
        if self._retry_at:
            self._up()

    def close(self) -> None:
        self._client.close()


def _masked(url: str) -> str:
    from ._uri import mask
    return mask(url)


_stores: dict = {}
_stores_lock = threading.Lock()


def open_store(spec: str, lease: float = 10.0):
    """The store for a ``cache=`` setting, one per setting and process.

    >>> open_store("memcached://x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    webpy_txscope._errors.ConfigurationError: unknown cache 'memcached://x': use cache="local", ...
    """
    key = (spec, lease)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            if spec == "local":
                store = LocalStore(lease=lease)
            elif spec.startswith("local:"):
                store = LocalStore(spec[len("local:"):], lease=lease)
            elif spec.startswith(("redis://", "rediss://", "unix://")):
                store = RedisStore(spec, lease=lease)
            else:
                raise ConfigurationError(
                    f"unknown cache {_masked(spec)!r}: use cache=\"local\", cache=\"local:/path/to/file\" "
                    f"or cache=\"redis://host:6379/0\"")
            _stores[key] = store
    return store
