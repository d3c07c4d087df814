"""txscope-check: look for stale reads in a running deployment of the cookbook.

    txscope-check http://127.0.0.1:8000 --clients 8 --rounds 20
    txscope-check http://app1:8000 http://app2:8000   # several servers, one database

Each client thread creates a few rows of its own (named after a prefix that
is new for every run; the API has no lookup by name, so rows are not reused
across runs). Every round it writes a fresh value to
each row, then reads it back several times, every read on a new connection so
that the reads land on other server processes. A read that does not return the
value just written is a *stale read*: the symptom of a SQLObject cache that
outlived its transaction in another process.

Every few rounds a client also asks the app to write a value and then crash.
That value must never be read (a *leaked crash write*: the crashed request was
committed), and the last acknowledged value must still be there (a *lost
write*).

At the end every row the run created is deleted again.  Stale reads only
show when reads land on another server process than the write, so a run
that saw fewer than two worker processes says so (and fails with
``--strict``).

Given several URLs (app servers, on one host or several, that share one
database), each client sends its requests to them in turn, so that most
writes are read back on another server than the one that took them; the
report counts those checks (*checks across servers*).

It drives the cookbook's JSON API only (``/api/users``, ``/api/stats``) and
uses the standard library only, so it can run from any Python next to any
deployment.

Exit status: 0 when no stale read, leaked crash write or lost write was seen;
1 when any was; 2 for a usage error or a target that cannot be used (with
``--strict``, also when fewer than two workers answered).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import secrets
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TextIO

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2

PASSWORD = "txscope-check"
PROBLEMS = ("stale_reads", "leaked_crash_writes", "lost_writes")
MAX_EXAMPLES = 5


class Unusable(Exception):
    """The target cannot be checked at all (unreachable, or not the cookbook)."""


class TransportError(Exception):
    """A request got no HTTP answer (refused, reset, timed out)."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: its status and its JSON body (None when not JSON)."""

    status: int
    body: Any
    server: int = 0  # which of the URLs answered (its index)


class Api:
    """The cookbook's JSON API. Every request opens a new connection.

    No keep-alive on purpose: a reused connection stays with one server
    process, and stale reads only show when reads land on other processes.
    """

    def __init__(self, url: str, timeout: float, index: int = 0) -> None:
        self.url = url
        self.index = index
        parts = urllib.parse.urlsplit(url)
        self._connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout

    def request(self, method: str, path: str, payload: dict | None = None) -> Reply:
        """Send one request on a fresh connection; raise TransportError if unanswered."""
        headers = {"Connection": "close", "Accept": "application/json"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection_class(self._host, self._port, timeout=self._timeout)
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise TransportError(f"{method} {path}: {error or type(error).__name__}") from error
        finally:
            connection.close()
        return Reply(response.status, _json_or_none(raw), self.index)

    def stats(self) -> Reply:
        return self.request("GET", "/api/stats")

    def create_user(self, name: str, fullname: str) -> Reply:
        payload = {"name": name, "fullname": fullname, "password": PASSWORD}
        return self.request("POST", "/api/users", payload)

    def get_user(self, user_id: int) -> Reply:
        return self.request("GET", f"/api/users/{user_id}")

    def update_user(self, user_id: int, fullname: str) -> Reply:
        return self.request("POST", f"/api/users/{user_id}", {"fullname": fullname})

    def crash_update(self, user_id: int, fullname: str) -> Reply:
        return self.request("POST", f"/api/users/{user_id}/crash", {"fullname": fullname})

    def delete_user(self, user_id: int) -> Reply:
        return self.request("POST", f"/api/users/{user_id}/delete", {})


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def classify_read(got: str, expected: str, crash_value: str | None = None) -> str | None:
    """Name the problem a read of a row's fullname shows, or None if it is right.

    `expected` is the last value the app acknowledged; `crash_value` the value
    of a crashed write since then, if any. After a crash any other value counts
    as a lost write: an older value cannot tell a rolled-back acknowledged
    write from a stale cache, and either way the acknowledged value is gone.

    >>> classify_read("new", "new") is None
    True
    >>> classify_read("old", "new")
    'stale_reads'
    >>> classify_read("boom", "new", crash_value="boom")
    'leaked_crash_writes'
    >>> classify_read("old", "new", crash_value="boom")
    'lost_writes'
    """
    if got == expected:
        return None
    if crash_value is None:
        return "stale_reads"
    if got == crash_value:
        return "leaked_crash_writes"
    return "lost_writes"


@dataclass
class Tally:
    """Counts shared by all client threads; every change goes through the lock."""

    checks: int = 0
    cross_server_checks: int = 0  # checks of a value read back on another server than the one that wrote it
    stale_reads: int = 0
    crash_writes: int = 0
    leaked_crash_writes: int = 0
    lost_writes: int = 0
    http_errors: int = 0
    servers: int = 1
    workers: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)
    first_error: str = ""
    not_deleted: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, problem: str | None, detail: str, cross_server: bool = False) -> None:
        """Count one check, and its problem if it found one."""
        with self._lock:
            self.checks += 1
            self.cross_server_checks += cross_server
            if problem:
                setattr(self, problem, getattr(self, problem) + 1)
                if len(self.examples) < MAX_EXAMPLES:
                    self.examples.append(f"{problem.replace('_', ' ')[:-1]}: {detail}")

    def crash_write(self) -> None:
        with self._lock:
            self.crash_writes += 1

    def http_error(self, detail: str) -> None:
        with self._lock:
            self.http_errors += 1
            self.first_error = self.first_error or detail

    def left_behind(self, detail: str) -> None:
        with self._lock:
            self.not_deleted.append(detail)

    def saw(self, body: Any, server: int = 0) -> None:
        """Remember which worker process (of which server) answered, when the answer says."""
        if isinstance(body, dict) and body.get("worker") is not None:
            with self._lock:
                self.workers.add(f"{server}/{body['worker']}")

    def problems(self) -> int:
        return sum(getattr(self, name) for name in PROBLEMS)


class Progress:
    """A one-line progress bar on stderr, redrawn in place with a carriage return."""

    WIDTH = 24
    INTERVAL = 0.1

    def __init__(self, total: int, tally: Tally, stream: TextIO, live: bool, quiet: bool) -> None:
        self.total = total
        self.done = 0
        self._tally = tally
        self._stream = stream
        self._live = live and not quiet
        self._quiet = quiet
        self._lock = threading.Lock()
        self._drawn_at = 0.0

    def advance(self, steps: int = 1) -> None:
        """Count finished row-rounds; redraw at most every INTERVAL seconds."""
        with self._lock:
            self.done += steps
            now = time.monotonic()
            if self._live and now - self._drawn_at >= self.INTERVAL:
                self._drawn_at = now
                self._stream.write("\r" + self.line())
                self._stream.flush()

    def finish(self, seconds: float) -> None:
        """Leave the final state on its own line (nothing with --quiet)."""
        if self._quiet:
            return
        prefix = "\r" if self._live else ""
        self._stream.write(f"{prefix}{self.line()} in {seconds:.1f} s\n")
        self._stream.flush()

    def line(self) -> str:
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        t = self._tally
        return (
            f"[{bar}] {self.done}/{self.total} rounds  checks {t.checks}  "
            f"stale {t.stale_reads}  leaked {t.leaked_crash_writes}  lost {t.lost_writes}  "
            f"errors {t.http_errors}  workers {len(t.workers)}"
        )


@dataclass
class Row:
    """A row one client owns, the last fullname the app acknowledged and the server that did.

    `value` is None while the row's content is unknown (a write got no clear
    answer); the next acknowledged write makes it known again.
    """

    id: int
    value: str | None
    written_on: int = 0


@dataclass(frozen=True)
class Options:
    """The command line, parsed; see `parse_args` for each option's meaning."""

    urls: tuple[str, ...]
    clients: int
    rows_per_client: int
    rounds: int
    reads: int
    crash_every: int
    timeout: float
    prefix: str
    strict: bool
    quiet: bool
    json: bool


class Client:
    """One simulated user: owns its rows, writes them and reads them back.

    With several servers (`apis`), its requests go to them in turn.  Each of
    its writes starts on the server after the one of its previous write (the
    first on server `number`, modulo their count, so that clients start
    apart), so its rows are written through every server, and the reads after
    a write go to the servers after it: with two servers, three of every five
    reads are served by the other server than the write.
    """

    def __init__(self, number: int, apis: Sequence[Api], tally: Tally, progress: Progress,
                 options: Options) -> None:
        self.number = number
        self.apis = list(apis)
        self.tally = tally
        self.progress = progress
        self.options = options
        self._serial = itertools.count()
        self._writes = itertools.count(number)
        self._turn = itertools.count(number)

    def run(self) -> None:
        """Create this client's rows, do every round on each of them, then delete them."""
        rows = [self._create_row(index) for index in range(self.options.rows_per_client)]
        try:
            rounds = self.options.rounds
            self.progress.advance(rounds * rows.count(None))
            for round_number in range(1, rounds + 1):
                for row in filter(None, rows):
                    self._write_and_read(row)
                    if self._crash_due(round_number):
                        self._crash_and_read(row)
                    self.progress.advance()
        finally:
            for row in filter(None, rows):
                self._delete_row(row)

    def _delete_row(self, row: Row) -> None:
        """Remove a row this run created; a row left behind is named in the report."""
        try:
            reply = self._next_api().delete_user(row.id)
        except TransportError as error:
            self.tally.left_behind(f"row {row.id}: {error}")
            return
        if reply.status != 200:
            self.tally.left_behind(f"row {row.id}: delete answered {reply.status}")

    def _create_row(self, index: int) -> Row | None:
        name = f"{self.options.prefix}-{self.number}-{index}"
        reply = self._send("create_user", name, f"{name} created", expect=201)
        if reply is None or not isinstance(reply.body.get("id"), int):
            return None
        return Row(reply.body["id"], reply.body.get("fullname"), reply.server)

    def _crash_due(self, round_number: int) -> bool:
        every = self.options.crash_every
        return every > 0 and round_number % every == 0

    def _fresh_value(self, row: Row, kind: str) -> str:
        return f"{self.options.prefix}-{self.number}-{row.id}-{kind}{next(self._serial)}"

    def _write_and_read(self, row: Row) -> None:
        value = self._fresh_value(row, "w")
        self._turn = itertools.count(next(self._writes))
        reply = self._send("update_user", row.id, value, expect=200)
        if reply is None:
            row.value = None
            return
        row.value, row.written_on = value, reply.server
        self._check(row, reply, None, "write answer")
        for _ in range(self.options.reads):
            self._read(row, None)

    def _crash_and_read(self, row: Row) -> None:
        if row.value is None:
            return
        crash_value = self._fresh_value(row, "crash")
        if self._send("crash_update", row.id, crash_value, expect=500, json_body=False) is None:
            row.value = None
            return
        self.tally.crash_write()
        for _ in range(self.options.reads):
            self._read(row, crash_value)

    def _read(self, row: Row, crash_value: str | None) -> None:
        reply = self._send("get_user", row.id, expect=200)
        if reply is not None and row.value is not None:
            self._check(row, reply, crash_value, "read")

    def _check(self, row: Row, reply: Reply, crash_value: str | None, what: str) -> None:
        body = reply.body
        got = body.get("fullname")
        if not isinstance(got, str):
            self.tally.http_error(f"{what} of row {row.id} has no fullname: {body!r}")
            return
        assert row.value is not None  # _read checks
        problem = classify_read(got, row.value, crash_value)
        worker = body.get("worker", "?")
        if len(self.apis) > 1:
            worker = f"{worker} of {self.apis[reply.server].url}"
        self.tally.check(problem, f"row {row.id} {what} by worker {worker}: {got!r}, expected {row.value!r}",
                         cross_server=reply.server != row.written_on)

    def _next_api(self) -> Api:
        return self.apis[next(self._turn) % len(self.apis)]

    def _send(self, call: str, *args: Any, expect: int, json_body: bool = True) -> Reply | None:
        """Make one request (`call` names an `Api` method) on the next server in turn.

        Counts an HTTP error unless it answers `expect`.  Returns the reply
        when it has the expected status (and a JSON object body, unless
        `json_body` is False), else None.
        """
        api = self._next_api()
        what = f"{call}({args[0] if args else ''})"
        if len(self.apis) > 1:
            what += f" on {api.url}"
        try:
            reply = getattr(api, call)(*args)
        except TransportError as error:
            self.tally.http_error(f"{what}: {error}")
            return None
        self.tally.saw(reply.body, reply.server)
        if reply.status != expect:
            self.tally.http_error(f"{what} answered {reply.status}, expected {expect}")
            return None
        if json_body and not isinstance(reply.body, dict):
            self.tally.http_error(f"{what} answered {reply.status} without a JSON object")
            return None
        return reply


def probe(api: Api, url: str) -> Reply:
    """Make sure the target is the cookbook app before starting the clients."""
    try:
        reply = api.stats()
    except TransportError as error:
        raise Unusable(f"cannot reach {url}: {error.__cause__ or error}") from error
    if reply.status != 200 or not isinstance(reply.body, dict) or "worker" not in reply.body:
        raise Unusable(
            f"{url}/api/stats answered {reply.status} without a worker field: "
            "is this the txscope cookbook app?"
        )
    return reply


def run(options: Options, stderr: TextIO, tally: Tally | None = None) -> tuple[Tally, float]:
    """Run all clients to the end; return the tally (`tally`, or a new one) and the seconds taken."""
    apis = [Api(url, options.timeout, index) for index, url in enumerate(options.urls)]
    tally = Tally() if tally is None else tally
    tally.servers = len(apis)
    for api in apis:
        tally.saw(probe(api, api.url).body, api.index)
    total = options.clients * options.rows_per_client * options.rounds
    progress = Progress(total, tally, stderr, live=stderr.isatty(), quiet=options.quiet)
    started = time.monotonic()
    with ThreadPoolExecutor(options.clients, thread_name_prefix="txscope-check") as pool:
        clients = [Client(n, apis, tally, progress, options) for n in range(options.clients)]
        for future in [pool.submit(client.run) for client in clients]:
            future.result()
    seconds = time.monotonic() - started
    progress.finish(seconds)
    return tally, seconds


def summary(tally: Tally, seconds: float) -> dict:
    """The numbers the report and the --json line show."""
    return {
        "checks": tally.checks,
        "cross_server_checks": tally.cross_server_checks,
        "stale_reads": tally.stale_reads,
        "crash_writes": tally.crash_writes,
        "leaked_crash_writes": tally.leaked_crash_writes,
        "lost_writes": tally.lost_writes,
        "http_errors": tally.http_errors,
        "workers_seen": len(tally.workers),
        "servers": tally.servers,
        "rows_not_deleted": len(tally.not_deleted),
        "duration_s": round(seconds, 3),
        "ok": tally.checks > 0 and tally.problems() == 0,
    }


def report(urls: Sequence[str], tally: Tally, numbers: dict, out: TextIO) -> None:
    """Print the summary table, then a few examples of what went wrong."""
    rows: list[tuple[str, Any]] = [
        ("checks made", numbers["checks"]),
        ("stale reads", numbers["stale_reads"]),
        ("crash writes", numbers["crash_writes"]),
        ("leaked crash writes", numbers["leaked_crash_writes"]),
        ("lost writes", numbers["lost_writes"]),
        ("HTTP errors", numbers["http_errors"]),
        ("workers seen", numbers["workers_seen"]),
        ("duration", f"{numbers['duration_s']:.1f} s"),
    ]
    if numbers["servers"] > 1:
        rows[1:1] = [("  across servers", numbers["cross_server_checks"])]
        rows.insert(-1, ("servers", numbers["servers"]))
    out.write(f"txscope-check {' '.join(urls)}\n")
    for label, value in rows:
        out.write(f"  {label:<20} {value:>10}\n")
    for example in tally.examples:
        out.write(f"  e.g. {example}\n")
    if tally.first_error:
        out.write(f"  first HTTP error: {tally.first_error}\n")
    for detail in tally.not_deleted[:MAX_EXAMPLES]:
        out.write(f"  not deleted: {detail}\n")
    if numbers["workers_seen"] < 2:
        out.write(f"  warning: {one_worker_warning(numbers['workers_seen'])}\n")
    verdict = "OK" if numbers["ok"] else "FAILED"
    if numbers["http_errors"]:
        verdict += f" (with {numbers['http_errors']} HTTP errors: fewer checks than planned)"
    out.write(f"result: {verdict}\n")


def one_worker_warning(workers: int) -> str:
    return (
        f"only {workers} worker process answered; a stale read needs a read served by another "
        "process than the write, so this run could not show one. Serve the app with several "
        "processes (e.g. mod_wsgi-express --processes 3) and run again"
    )


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    return text.rstrip("/")


def parse_args(argv: Sequence[str] | None) -> Options:
    """Read the command line; argparse exits with status 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="txscope-check",
        description="Look for stale reads, leaked crash writes and lost writes in a running "
        "deployment of the webpy_txscope cookbook app.",
        epilog="Exit status: 0 clean, 1 problems found, 2 usage or connection error "
        "(or, with --strict, fewer than two workers seen).",
    )
    parser.add_argument("urls", type=_http_url, nargs="+", metavar="URL",
                        help="base URL of the deployment, e.g. http://127.0.0.1:8000; several URLs: app servers "
                        "sharing one database, each client's requests go to them in turn")
    parser.add_argument("--clients", type=_positive(int), default=8, metavar="N",
                        help="concurrent clients (default: %(default)s)")
    parser.add_argument("--rows-per-client", type=_positive(int), default=2, metavar="K",
                        help="rows each client creates and owns (default: %(default)s)")
    parser.add_argument("--rounds", type=_positive(int), default=20, metavar="R",
                        help="write-then-read rounds per row (default: %(default)s)")
    parser.add_argument("--reads", type=_positive(int), default=5, metavar="M",
                        help="reads after each write, each on a new connection (default: %(default)s)")
    parser.add_argument("--crash-every", type=_not_negative, default=5, metavar="C",
                        help="crash a write every C rounds, 0 for never (default: %(default)s)")
    parser.add_argument("--timeout", type=_positive(float), default=10.0, metavar="S",
                        help="seconds to wait for each answer (default: %(default)s)")
    parser.add_argument("--prefix", default=f"chk{secrets.token_hex(3)}",
                        help="start of the names of the rows this run creates (default: random)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 when fewer than two worker processes answered")
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    parser.add_argument("--json", action="store_true",
                        help="also print the summary as one JSON line, last on stdout")
    args = parser.parse_intermixed_args(argv)  # URLs may come before and after the options
    args.urls = tuple(args.urls)
    return Options(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit status."""
    options = parse_args(argv)
    try:
        tally, seconds = run(options, sys.stderr)
    except Unusable as error:
        sys.stderr.write(f"txscope-check: {error}\n")
        return EXIT_UNUSABLE
    numbers = summary(tally, seconds)
    report(options.urls, tally, numbers, sys.stdout)
    if options.json:
        sys.stdout.write(json.dumps(numbers, sort_keys=True) + "\n")
    if tally.checks == 0:
        sys.stderr.write(f"txscope-check: no check could be made; first error: {tally.first_error}\n")
        return EXIT_UNUSABLE
    if numbers["workers_seen"] < 2:
        sys.stderr.write(f"txscope-check: warning: {one_worker_warning(numbers['workers_seen'])}\n")
        if options.strict:
            return EXIT_UNUSABLE
    return EXIT_OK if numbers["ok"] else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
