"""What both HTTP adapters share: the answers of their own, and request-body replay.

The core says how a unit of work ended (:class:`~webpy_txscope.core.Outcome`);
turning an outcome into an HTTP answer is the adapters' side.
"""

from __future__ import annotations

from typing import Any, Iterator

from .core import UNAVAILABLE, Outcome, Scope, ScopeManager

Answer = tuple[str, list[tuple[str, str]], str]


def failure_answer(manager: ScopeManager, outcome: Outcome, scope: Scope | None = None) -> Answer:
    """``(status, headers, text)`` in place of the application's answer when *outcome* failed.

    An unreachable database (or shared-cache store, for a write) is a 503
    with ``Retry-After``, which tells clients and load balancers when to ask
    again instead of a 500 that looks like a bug.  A commit that did not
    happen is a 500 that never claims the changes were kept; one that
    happened but could not be confirmed (*scope*'s ``kept``) is a 500 that
    never claims they were lost.
    """
    text = [("Content-Type", "text/plain; charset=utf-8")]
    if outcome is UNAVAILABLE:
        # A connection lost during COMMIT may have kept the changes: only a service's outage says "not kept".
        said = "A service this site needs is unavailable and nothing of this request was kept" \
            if scope is not None and scope.service_down else "The database is unavailable"
        return ("503 Service Unavailable", text + [("Retry-After", str(manager.retry_after))],
                f"{said}; please try again shortly.\n")
    if scope is not None and scope.kept:
        return ("500 Internal Server Error", text,
                "The changes were saved, but the request could not be completed. Reload the page to see them.\n")
    return ("500 Internal Server Error", text, "The changes could not be saved; nothing of this request was kept.\n")


class RequestBody:
    """``wsgi.input`` that keeps what the application read, so that a retry reads it again.

    Only what an attempt actually read is kept, as it is read: a request that
    is not retried costs no copy of its body in advance, and a retry reads
    the kept bytes first, then the rest of the server's stream.
    """

    def __init__(self, stream: Any):
        self._stream = stream
        self._kept = bytearray()
        self._pos = 0

    def rewind(self) -> None:
        self._pos = 0

    def _take(self, size: int) -> bytes:
        """Up to *size* kept bytes not yet read by this attempt (all of them if size < 0)."""
        end = len(self._kept) if size < 0 else min(len(self._kept), self._pos + size)
        data = bytes(self._kept[self._pos:end])
        self._pos = end
        return data

    def _more(self, data: bytes) -> bytes:
        self._kept += data
        self._pos = len(self._kept)
        return data

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        data = self._take(size)
        if size < 0:
            return data + self._more(self._stream.read())
        if len(data) < size:
            data += self._more(self._stream.read(size - len(data)))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        kept = self._kept
        newline = kept.find(b"\n", self._pos)
        if newline >= 0 and (size < 0 or newline + 1 - self._pos <= size):
            return self._take(newline + 1 - self._pos)
        data = self._take(size)
        if size < 0:
            return data + self._more(self._stream.readline())
        if len(data) < size:
            data += self._more(self._stream.readline(size - len(data)))
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def close(self) -> None:
        pass
