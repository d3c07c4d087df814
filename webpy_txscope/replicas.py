"""Reads on PostgreSQL streaming replicas, without stale reads.

A replica applies the primary's commits a little later.  A client that saves a
form and is sent to a page read from a replica would see its old value: the
stale read this package exists to prevent, one level up.  This module decides,
per request, which server a scope runs on, from WAL positions (never from
timers):

* Requests with a safe method (GET, HEAD, OPTIONS) may read on a replica, in a
  READ ONLY transaction; every other request runs on the primary.
* ``consistency="session"``: read-your-writes and monotonic reads per client.
  The client carries a *position* in a cookie: the primary's WAL position
  after its last commit, raised after every read to what that read may have
  seen.  A replica serves the client only once it has replayed past that
  position (waiting at most ``replica_wait`` seconds, else the primary).
* ``consistency="strong"``: every replica read first asks the primary for its
  current position (one round trip) and runs on a replica that replayed past
  it, or on the primary: a read that starts after any commit was
  acknowledged, to anyone, sees it.

Replay positions only grow, so a position a replica was once seen to have
replayed is proof enough: most reads are routed with no round trip at all.
A replica that cannot be reached (or is no longer in recovery) is skipped,
probed again with a growing backoff, and logged once per outage;
``max_replica_lag`` (seconds) keeps clients without a position off replicas
that fall too far behind.

The router is framework-free.  When a request starts, the adapters ask
:meth:`ReplicaRouter.request` (no round trip); a safe-method scope's
:class:`RoutedTransaction` asks :meth:`ReplicaRouter.route` at its first
statement, so a request that never touches the database is never routed.
When the scope ended, the finish step asks :meth:`ReplicaRouter.position_after`
for the client's new position cookie.

With the shared cache (``cache=``), a safe-method scope's transaction is the
cache's, routed (:func:`routed_class`).  An entry whose tokens are current
shows everything acknowledged, so it is served before any routing, with no
wait in either mode; a read a replica answered is never stored, as its
snapshot may predate the tokens read before it.  An entry shows the
primary's present: in session mode, the rest of a request that was served
one reads on the primary, and the client leaves with the primary's position,
so that its reads never go back in time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

from sqlobject.dbconnection import DBConnection

from . import _driver, _metrics
from ._errors import DISCONNECT, ConfigurationError, _chain, _code, classify
from ._tx import ScopeTransaction
from ._uri import describe, mask, open_connection, scrub

log = logging.getLogger("webpy_txscope")

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
#: The cookie that carries a client's position (session consistency).
POSITION_COOKIE = "txscope_pos"
_COOKIE_VALUE = re.compile(rf"(?:^|[;,]\s*){POSITION_COOKIE}=([^;,\s]*)")
#: SQLSTATE of a write in a READ ONLY transaction.
READ_ONLY_SQL_TRANSACTION = "25006"

# The default WAL page size (XLOG_BLCKSZ) and its header sizes: see _replayed_past.
_WAL_PAGE = 8192
_WAL_PAGE_HEADERS = (24, 40)

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

# Seconds a replica that failed is left alone before the next probe: doubled
# after every failed probe, up to the maximum.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# How old a replica's measured lag may be before max_replica_lag asks again.
LAG_FRESH = 1.0
# Between two polls of a replica a client waits for.
POLL_INTERVAL = 0.005

_PROBE = ("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
          # Idle replicas have replayed everything they received: no lag, whatever
          # the timestamp of the last commit says.
          "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
          "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END")
# Where the primary's next WAL record goes: past every commit acknowledged so
# far, also with synchronous_commit = off (whose commits may not be written yet).
_PRIMARY_POSITION = "SELECT pg_current_wal_insert_lsn()::text"


def parse_lsn(text: Any) -> int | None:
    """A WAL position as a number, or None for anything that is not one.

    >>> parse_lsn("0/3000060")
    50331744
    >>> parse_lsn("16/B374D848"), parse_lsn("nonsense"), parse_lsn(None)
    (97500059720, None, None)
    """
    if not isinstance(text, str):
        return None
    match = _LSN.match(text.strip())
    if match is None:
        return None
    return int(match.group(1), 16) << 32 | int(match.group(2), 16)


def format_lsn(position: int) -> str:
    """A WAL position as PostgreSQL writes it.

    >>> format_lsn(50331744)
    '0/3000060'
    """
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def _replayed_past(replayed: int, target: int) -> bool:
    """True if a replica that replayed up to *replayed* has everything before *target*.

    *target* comes from ``pg_current_wal_insert_lsn()``, which on a fresh WAL
    page points past the page header, where no record ends; the replica's
    replay position then stops at the page start until the next record.

    >>> _replayed_past(0x4000000, 0x4000018), _replayed_past(0x3FFFFF8, 0x4000018)
    (True, False)
    """
    if replayed >= target:
        return True
    header = target % _WAL_PAGE
    return header in _WAL_PAGE_HEADERS and replayed >= target - header


def is_write_on_replica(error: BaseException | None) -> bool:
    """True if *error* is PostgreSQL refusing a write in a read-only transaction (SQLSTATE 25006)."""
    return any((found := _code(err)) is not None and found[1] == READ_ONLY_SQL_TRANSACTION for err in _chain(error))


def position_cookie(header: str | None) -> str | None:
    """The client's position cookie in a ``Cookie:`` header, unchecked (:func:`parse_lsn` checks it).

    >>> position_cookie("theme=dark; txscope_pos=0/3000060")
    '0/3000060'
    """
    if not header or POSITION_COOKIE not in header:
        return None
    match = _COOKIE_VALUE.search(header)
    return match.group(1) if match else None


def set_cookie(value: str) -> tuple[str, str]:
    """The ``Set-Cookie`` header that hands a client its new position.

    A session cookie for the whole site, out of reach of scripts: it only
    steers which server answers this client's reads.
    """
    return ("Set-Cookie", f"{POSITION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax")


class _Probes:
    """Driver connections in autocommit for the router's own queries, one server.

    Not SQLObject's pool: its autocommit path puts a connection that died back
    into the pool.  Here a connection that failed is closed and dropped.
    """

    def __init__(self, connection: DBConnection):
        self.connection = connection
        self._idle: list = []

    def query(self, sql: str) -> tuple:
        db = self.connection
        try:
            raw = self._idle.pop()
        except IndexError:
            raw = db.makeConnection()
            db._setAutoCommit(raw, True)
            if getattr(raw, "prepare_threshold", None) is not None:
                raw.prepare_threshold = None  # psycopg 3: nothing prepared, for PgBouncer in front
        try:
            cursor = raw.cursor()
            cursor.execute(sql)
            row = cursor.fetchone()
            cursor.close()
        except BaseException:
            try:
                raw.close()
            except Exception:
                pass
            raise
        self._idle.append(raw)
        return row

    def close(self) -> None:
        while self._idle:
            try:
                self._idle.pop().close()
            except Exception:
                pass

    def detach(self) -> None:
        """In a forked child: never use (nor close) the parent's connections."""
        for raw in self._idle:
            _driver.inherit(raw)
        self._idle = []


class Replica:
    """One replica as this process knows it: what it replayed, its lag, its health."""

    def __init__(self, connection: DBConnection):
        self.connection = connection
        self.name = describe(connection)
        self.probes = _Probes(connection)
        self.replayed = 0  # the highest replay position seen: it never goes back
        self.lag = 0.0
        self.lag_at = 0.0  # monotonic time of the last lag measurement (0: never)
        self.down = False
        self.retry_at = 0.0  # while down: when to probe again
        self.backoff = BACKOFF_FIRST
        self._health = threading.Lock()

    def probe(self) -> bool:
        """Ask the replica where it is; False (and marked down) if it cannot say."""
        try:
            recovering, replayed, lag = self.probes.query(_PROBE)
        except Exception as e:
            self.failed(e)
            return False
        if not recovering:
            self.failed(ConfigurationError("it is not in recovery: it was promoted, or is not a replica"))
            return False
        position = parse_lsn(replayed) or 0
        if position > self.replayed:
            self.replayed = position
        self.lag = float(lag or 0)
        self.lag_at = time.monotonic()
        if self.down:
            with self._health:
                was_down, self.down = self.down, False
                self.backoff = BACKOFF_FIRST
            if was_down:
                log.warning("replica %s is reachable again; reads go to it again", self.name)
        return True

    def failed(self, error: BaseException) -> None:
        """Take the replica out of service until a probe after the backoff; log once per outage."""
        with self._health:
            was_down, self.down = self.down, True
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        if not was_down:
            log.error("replica %s is unreachable, reading elsewhere until it is back: %s",
                      self.name, scrub(f"{type(error).__name__}: {error}", self.connection))


@dataclass(frozen=True)
class Route:
    """Where one scope runs: the primary (``replica`` None) or a replica.

    *position* is the client's position as the request brought it (session
    consistency; None without a valid cookie), *cookie* the raw cookie value.
    """

    connection: DBConnection
    replica: Replica | None
    position: int | None
    cookie: str | None
    pending = False  # a Route is decided; see Request

    @property
    def on_replica(self) -> bool:
        return self.replica is not None


@dataclass(frozen=True)
class Request:
    """A safe-method request not routed yet: its transaction routes it at its first statement."""

    method: str
    cookie: str | None
    pending = True


class RoutedTransaction(ScopeTransaction):
    """The transaction of a safe-method request: it chooses its server at its first statement.

    Until then it is the primary's (SQLObject's lookups before the first
    statement only need the kind of connection, the same for every server),
    so a request that never touches the database costs no routing at all,
    not even strong consistency's round trip to the primary.  It also
    remembers a write a replica refused: the failure a transaction keeps has
    no SQLSTATE, and that refusal is what runs the request again on the primary.

    With ``cache=`` the router puts it on top of the shared cache's
    transaction (:func:`routed_class`): the cache serves current entries
    before any routing, and stores nothing this transaction reads on a
    replica (:attr:`no_store`), whose snapshot may predate the tokens read
    before the statement.
    """

    # A slot, not in __dict__: the scope's "untouched" test counts __dict__'s
    # keys, and routing alone does not touch the database.
    __slots__ = ("_routing",)

    #: Where it runs, once its first statement chose (None before).
    route: Route | None = None
    refused_write = False
    #: Set by the shared cache (cache=) once it served this transaction an entry.
    cache_served = False
    #: Why the shared cache (cache=) must store nothing this transaction reads, or "".
    no_store = ""

    def __init__(self, router: ReplicaRouter, request: Request, begin: tuple[str, ...], end: tuple[str, ...],
                 replica_begin: tuple[str, ...]):
        super().__init__(router.primary, begin, end)
        self._routing = (router, request, replica_begin, True)

    def prefer(self, replica_begin: tuple[str, ...], replica: bool | None) -> None:
        """New first statements for a replica; *replica* False keeps the transaction on the primary."""
        router, request, _, allowed = self._routing
        self._routing = (router, request, replica_begin, allowed if replica is None else replica)

    def _checkout(self) -> Any:
        if self.route is None:
            router, request, replica_begin, allowed = self._routing
            if allowed and self.cache_served and router.consistency == "session":
                # The entry showed the primary's present; a replica at the client's
                # position may be older, and a request must not go back in time.
                allowed = False
                router._count("primary_reads")
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("after an entry of the shared cache, the rest of the request reads on the primary")
            route = self.route = router.route(request.method, request.cookie, allowed)
            if route.replica is not None:
                self._dbConnection = route.connection
                self._begin = replica_begin
                self.no_store = REPLICA_SNAPSHOT
        return super()._checkout()

    def _fail(self, kind: Any, error: BaseException | None) -> None:
        if error is not None and is_write_on_replica(error):
            self.refused_write = True
        super()._fail(kind, error)


#: Why the shared cache stores nothing a replica answered (logged at DEBUG).
REPLICA_SNAPSHOT = "not stored: read on a replica, whose snapshot may predate the tokens read before it"


def routed_class(base: type[ScopeTransaction]) -> type[RoutedTransaction]:
    """The routed transaction on top of *base*, a scope's transaction class (the shared cache's with cache=).

    >>> routed_class(ScopeTransaction) is RoutedTransaction
    True
    """
    if base is ScopeTransaction:
        return RoutedTransaction
    return type(f"Routed{base.__name__}", (RoutedTransaction, base), {})


class ReplicaRouter:
    """Chooses the server of each scope among a primary and its streaming replicas."""

    def __init__(self, primary: DBConnection, replicas: Iterable[Any], *, consistency: str = "session",
                 replica_wait: float = 0.5, max_replica_lag: float | None = None,
                 transaction_class: type[ScopeTransaction] = ScopeTransaction):
        # consistency, replica_wait and max_replica_lag were checked with the
        # other options (webpy_txscope._options.Settings).
        self.primary = primary
        #: What a safe-method scope's transaction is: *transaction_class* (the manager's), routed.
        self.transaction_class = routed_class(transaction_class)
        self.consistency = consistency
        self.replica_wait = replica_wait
        self.max_replica_lag = max_replica_lag
        self.replicas = [Replica(c) for c in _replica_connections(primary, replicas)]
        self.primary_probes = _Probes(primary)
        self.primary_position = 0  # the highest position of the primary seen
        self._next = 0
        _routers.add(self)
        self.counts = {"replica_reads": 0, "primary_reads": 0, "replica_fallbacks": 0, "replica_waits": 0,
                       "replica_reruns": 0}

    def __repr__(self) -> str:
        return f"<ReplicaRouter {self.consistency} {describe(self.primary)} + {len(self.replicas)} replicas>"

    # -- when a request starts -----------------------------------------------------------

    def request(self, method: str, cookie: str | None) -> Route | Request:
        """What a request starts with, without a round trip: the primary for an unsafe method, else a
        :class:`Request` its transaction routes at its first statement (see :meth:`route`)."""
        if method in SAFE_METHODS:
            return Request(method, cookie)
        return Route(self.primary, None, parse_lsn(cookie) if self.consistency == "session" else None, cookie)

    def route(self, method: str, cookie: str | None = None, replica: bool = True) -> Route:
        """The server for a request with *method* and the client's position *cookie*.

        *replica* False keeps the request on the primary (a handler marked
        ``scope_options(replica=False)``).
        """
        position = parse_lsn(cookie) if self.consistency == "session" else None
        if not replica or method not in SAFE_METHODS:
            return Route(self.primary, None, position, cookie)
        try:
            chosen = self._choose(self._target(position))
        except Exception as e:  # the primary could not say where it is: it answers the read itself
            log.warning("could not route a read by WAL position, reading on the primary: %s",
                        scrub(f"{type(e).__name__}: {e}", self.primary))
            chosen = None
        if chosen is None:
            self._count("primary_reads")
            self._count("replica_fallbacks")
            return Route(self.primary, None, position, cookie)
        self._count("replica_reads")
        return Route(chosen.connection, chosen, position, cookie)

    def _count(self, name: str) -> None:
        self.counts[name] += 1
        _metrics._replica_counts[name] += 1

    def _target(self, position: int | None) -> int:
        """The WAL position a replica must have replayed to serve this read."""
        if self.consistency == "strong":
            return self._ask_primary()
        if position is None:
            return 0
        if position > self.primary_position:
            # From another process, or forged: never ahead of the primary, so
            # a forged position costs one round trip and no wait.
            position = min(position, self._ask_primary())
        return position

    def _ask_primary(self) -> int:
        position = parse_lsn(self.primary_probes.query(_PRIMARY_POSITION)[0]) or 0
        if position > self.primary_position:
            self.primary_position = position
        return position

    def _choose(self, target: int) -> Replica | None:
        now = time.monotonic()
        for replica in self.replicas:
            if replica.down and now >= replica.retry_at:
                replica.retry_at = now + replica.backoff  # one thread probes, the others go on
                replica.probe()
        start = self._next = (self._next + 1) % len(self.replicas)
        candidates = [r for r in self.replicas[start:] + self.replicas[:start] if not r.down]
        for replica in candidates:  # known to have replayed enough: no round trip
            if _replayed_past(replica.replayed, target) and self._lag_ok(replica, now):
                return replica
        deadline = now + self.replica_wait
        waited = False
        while candidates:
            for replica in candidates:
                if replica.probe() and _replayed_past(replica.replayed, target) and self._lag_ok(replica, None):
                    if waited:
                        self._count("replica_waits")
                    return replica
            candidates = [r for r in candidates if not r.down]
            if not candidates or time.monotonic() + POLL_INTERVAL > deadline:
                return None
            waited = True
            time.sleep(POLL_INTERVAL)
        return None

    def _lag_ok(self, replica: Replica, now: float | None) -> bool:
        """Within max_replica_lag (measured again when the last measurement is old)."""
        limit = self.max_replica_lag
        if limit is None:
            return True
        if now is not None and now - replica.lag_at > LAG_FRESH and not replica.probe():
            return False
        return replica.lag <= limit

    # -- when it ended ----------------------------------------------------------------------

    def position_after(self, route: Route, touched: bool, served: bool = False, tx: Any = None) -> str | None:
        """The client's new position cookie value, or None to leave the cookie as it is.

        Session consistency only, and only after a scope that touched the
        database or was *served* entries of the shared cache: on the primary,
        the primary's position now (past the commit just made and everything
        the scope read); on a replica, the replica's replay position now (past
        everything the scope's statements saw).  An entry shows the primary's
        present, so a scope served one gets the primary's position wherever it
        ran, except a scope served only entries that carry a position (*tx*
        of the shared cache): the highest of those is past what they show,
        and costs no round trip.  Never lower than the client's position,
        unless that was beyond the primary's (forged).  A position asked of
        the primary is given to the entries *tx* stored (on the primary: a
        replica's reads are never stored).
        """
        if self.consistency != "session" or not (touched or served):
            return None
        # The class, not the transaction: an ended transaction refuses every attribute it lacks.
        cached = hasattr(type(tx), "stamp_entries")  # the shared cache's transaction (cache=)
        stamped = tx.served_position if cached else None
        try:
            # A replica that cannot say where it is now: the primary's position
            # is past anything the replica could have shown.
            if route.replica is not None and not served and route.replica.probe():
                position = route.replica.replayed
            elif served and not touched and stamped:
                position = stamped
            else:
                position = self._ask_primary()
                if cached:
                    tx.stamp_entries(position)
        except Exception:
            log.exception("could not read the WAL position for the client's cookie; it keeps its old one")
            return None
        if route.position is not None and route.position > position and route.position <= self.primary_position:
            position = route.position
        value = format_lsn(position)
        return None if value == route.cookie else value

    def rerun_on_primary(self, route: Route, tx: ScopeTransaction, error: BaseException | None) -> bool:
        """True if *tx*, on the replica of *route*, failed in a way the primary fixes: run the request there.

        A handler of a safe method that writes gets SQLSTATE 25006 on the
        replica (*error*, or the refusal its transaction kept when the handler
        swallowed it).  A replica lost mid-request, or one that does not answer
        a probe after a statement failed on it (behind PgBouncer a dead server
        shows as PgBouncer's own errors), is taken out of service.  A statement
        that failed on a healthy replica is the application's error: no rerun.
        """
        if route.replica is None:
            return False
        if getattr(tx, "refused_write", False) or is_write_on_replica(error):
            self._count("replica_reruns")
            return True
        failure = tx.failure
        if failure is not None and failure.kind is DISCONNECT or classify(error) is DISCONNECT:
            route.replica.failed(ConnectionError(failure.summary if failure else str(error)))
        elif failure is None or route.replica.probe():
            return False
        self._count("replica_reruns")
        return True

    def rerun_after_failed_commit(self, route: Route) -> bool:
        """True: a read whose COMMIT failed on a replica runs again on the primary.

        A replica keeps no write, so running the request again repeats
        nothing; the probe takes a replica that went away out of service.
        """
        assert route.replica is not None
        route.replica.probe()
        self._count("replica_reruns")
        return True

    def transaction(self, request: Request, begin: tuple[str, ...], end: tuple[str, ...],
                    replica_begin: tuple[str, ...]) -> RoutedTransaction:
        """The transaction of a scope for *request*, routed at its first statement."""
        return self.transaction_class(self, request, begin, end, replica_begin)

    def primary_route(self, route: Route | Request) -> Route:
        """The same request's route, on the primary."""
        if isinstance(route, Request):
            return Route(self.primary, None, parse_lsn(route.cookie) if self.consistency == "session" else None,
                         route.cookie)
        return Route(self.primary, None, route.position, route.cookie)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def close(self) -> None:
        self.primary_probes.close()
        for replica in self.replicas:
            replica.probes.close()


#: Every router of this process, for fork safety.
_routers: weakref.WeakSet[ReplicaRouter] = weakref.WeakSet()


def _detach_after_fork() -> None:
    """A forked child (gunicorn --preload) probes on connections of its own, not the parent's sockets."""
    for router in list(_routers):
        router.primary_probes.detach()
        for replica in router.replicas:
            replica.probes.detach()


_driver.after_fork_hooks.append(_detach_after_fork)


# -- configuration ---------------------------------------------------------------------------


def _kind(uri_or_connection: Any) -> str | None:
    """The database kind a URI names, read from its scheme (None if it cannot be told)."""
    if isinstance(uri_or_connection, DBConnection):
        return uri_or_connection.dbName
    if not isinstance(uri_or_connection, str):
        return None
    scheme = uri_or_connection.partition(":")[0].lower()
    return {"postgres": "postgres", "postgresql": "postgres", "psycopg": "postgres", "psycopg2": "postgres",
            "mysql": "mysql", "sqlite": "sqlite"}.get(scheme)


def check_kinds(primary: Any, replicas: Iterable[Any]) -> None:
    """Refuse replicas= for a primary or replicas that are not PostgreSQL, before connecting to any."""
    kind = _kind(primary)
    if kind not in (None, "postgres"):
        what = "SQLite has no replicas" if kind == "sqlite" else "replicas are supported on PostgreSQL only"
        raise ConfigurationError(f"replicas= with {mask(primary) if isinstance(primary, str) else primary}: "
                                 f"{what}; drop replicas=, or use PostgreSQL streaming replicas")
    if isinstance(replicas, (str, bytes, DBConnection)) or not hasattr(replicas, "__iter__"):
        return  # _replica_connections says what replicas= takes
    for replica in replicas:
        if _kind(replica) not in (None, "postgres"):
            shown = mask(replica) if isinstance(replica, str) else describe(replica)
            raise ConfigurationError(f"replica {shown} is not a PostgreSQL database: "
                                     "replicas of a PostgreSQL primary are PostgreSQL URIs too")


def _replica_connections(primary: DBConnection, replicas: Iterable[Any]) -> list[DBConnection]:
    check_kinds(primary, replicas)
    kind = primary.dbName
    if kind != "postgres":
        what = "SQLite has no replicas" if kind == "sqlite" else "replicas are supported on PostgreSQL only"
        raise ConfigurationError(f"replicas= with {describe(primary)}: {what}; drop replicas=, or use "
                                 f"PostgreSQL streaming replicas")
    if isinstance(replicas, (str, bytes, DBConnection)) or not hasattr(replicas, "__iter__"):
        raise ConfigurationError("replicas= takes a list of PostgreSQL URIs, for example "
                                 "replicas=['postgres://app@replica1/db']")
    connections: list[DBConnection] = []
    for replica in replicas:
        connection = open_connection(replica)
        if connection.dbName != "postgres":
            raise ConfigurationError(f"replica {describe(connection)} is not a PostgreSQL database: "
                                     f"replicas of a PostgreSQL primary are PostgreSQL URIs too")
        if _same_server(connection, primary):
            raise ConfigurationError(f"replica {describe(connection)} is the primary itself: list the "
                                     f"replicas' own hosts or ports in replicas=")
        if connection.driver != primary.driver:
            raise ConfigurationError(f"replica {describe(connection)} uses the driver {connection.driver}, the "
                                     f"primary {primary.driver}: give every URI the same ?driver=")
        if any(_same_server(connection, other) for other in connections):
            raise ConfigurationError(f"replica {describe(connection)} is listed twice in replicas=")
        connections.append(connection)
    return connections


def _same_server(a: DBConnection, b: DBConnection) -> bool:
    def where(c):
        host = getattr(c, "host", None) or "localhost"
        return ("localhost" if host == "127.0.0.1" else host, getattr(c, "port", None) or 5432,
                getattr(c, "db", None))

    return where(a) == where(b)
