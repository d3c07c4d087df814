"""The commit decision: a small pure function of how a unit of work ended.

A *commit veto* is ``callable(status, headers) -> bool``; ``True`` means
"do not commit".  The adapters ask it only when the work ended with a status
(a normal return, or a web.py ``HTTPError`` used for control flow).  Any
other exception always rolls back, and so does a doomed transaction.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple, Union

Status = Union[str, int, None]
Headers = Optional[Iterable[Tuple[str, str]]]
CommitVeto = Callable[[Status, Headers], bool]


def status_code(status: Status) -> int:
    """The numeric part of a status line.

    >>> status_code("303 See Other"), status_code(404), status_code(None)
    (303, 404, 200)
    """
    if status is None:
        return 200
    if isinstance(status, int):
        return status
    try:
        return int(str(status).split(None, 1)[0])
    except (ValueError, IndexError):
        return 500


def _x_tm(headers: Headers) -> Optional[str]:
    for name, value in headers or ():
        if name.lower() == "x-tm":
            return value.strip().lower()
    return None


def default_commit_veto(status: Status, headers: Headers = None) -> bool:
    """Roll back on 5xx; commit everything else (2xx, 3xx, 304, 404, 4xx).

    web.py raises ``HTTPError`` for redirects and "not found", so those are
    answers, not failures, and their writes commit.  A response header
    ``X-Tm: commit`` or ``X-Tm: abort`` overrides the status.

    >>> default_commit_veto("200 OK"), default_commit_veto("303 See Other")
    (False, False)
    >>> default_commit_veto("404 Not Found"), default_commit_veto("500 Internal Server Error")
    (False, True)
    >>> default_commit_veto("200 OK", [("X-Tm", "abort")])
    True
    """
    override = _x_tm(headers)
    if override is not None:
        return override != "commit"
    return status_code(status) >= 500


def strict_commit_veto(status: Status, headers: Headers = None) -> bool:
    """Roll back on 4xx and 5xx (pyramid_tm's rule); ``X-Tm`` overrides.

    >>> strict_commit_veto("303 See Other"), strict_commit_veto("404 Not Found")
    (False, True)
    """
    override = _x_tm(headers)
    if override is not None:
        return override != "commit"
    return status_code(status) >= 400
