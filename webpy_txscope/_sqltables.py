"""Which tables a SQL statement reads or writes, read off the SQL SQLObject generates.

The shared cache trusts this module for one thing only: a statement it calls a
cacheable read reads no table it did not list.  Everything it does not
understand is therefore *not* a cacheable read; a statement it does not know
to be harmless counts as a write of every table (:data:`ALL_TABLES`).  Extra
tables (a word ``FROM`` inside a string literal) only cost extra
invalidations.
"""

from __future__ import annotations

import re

from ._cachestore import ALL_TABLES

READ = "read"  # a plain SELECT of the listed tables: cacheable
UNCACHEABLE = "uncacheable"  # reads, but not something an entry may stand for
WRITE = "write"  # changes the listed tables (ALL_TABLES: any table)
NEUTRAL = "neutral"  # changes no data: SAVEPOINT, SHOW
BEGIN = "begin"  # starts a transaction explicitly: one snapshot from here on (SQLite)

_WORD = re.compile(r"\s*([A-Za-z_]+)")
_IDENT = r'(?:"(?:[^"]|"")+"|`[^`]+`|[A-Za-z_][A-Za-z_0-9$]*)'
_NAME = re.compile(rf"\s*({_IDENT}(?:\s*\.\s*{_IDENT})*)")
_ALIAS = re.compile(rf"\s*(?:AS\s+)?({_IDENT})", re.I)
_SOURCE = re.compile(r"\b(?:FROM|JOIN)\b", re.I)
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z_0-9]*)\s*\(")
_LOCKING = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+)?(?:UPDATE|SHARE|KEY\s+SHARE)\b|\bLOCK\s+IN\s+SHARE\s+MODE\b", re.I)
_INTO = re.compile(r"\bINTO\b", re.I)

#: Functions and keywords followed by "(" whose result depends on their arguments only.
PURE = frozenset("""
select from where and or not in exists any all some as on using join case when then else values
count sum min max avg distinct coalesce nullif greatest least lower upper length char_length
octet_length abs round floor ceil ceiling trim ltrim rtrim substr substring replace concat position
strpos mod cast like ilike is between over by having limit offset desc asc null
""".split())

#: Words that follow FROM/JOIN but are not a table: a statement using them is not parsed.
_NOT_TABLES = frozenset("only lateral select values table unnest rows with recursive dual".split())
#: Words after which a FROM/JOIN item list may go on: aliases are never these.
_CLAUSES = frozenset("""
where group order limit offset having union intersect except join inner left right full outer cross
natural on using window for lock fetch into procedure returning set
""".split())

_NEUTRAL = frozenset(("SAVEPOINT", "RELEASE", "SHOW", "DESCRIBE", "EXPLAIN"))

_memo: dict[str, tuple[str, tuple[str, ...]]] = {}


def classify_sql(sql: str) -> tuple[str, tuple[str, ...]]:
    """``(kind, tables)`` of one statement; memoized, as SQLObject repeats its statements.

    >>> classify_sql("SELECT person.id, person.name FROM person WHERE ((person.id) = (1))")
    ('read', ('person',))
    >>> classify_sql("SELECT a.id FROM a, public.b AS bb LEFT JOIN \\"C\\" ON a.x = c.y")
    ('read', ('a', 'b', 'c'))
    >>> classify_sql("SELECT COUNT(*) FROM person WHERE person.id IN (SELECT x.p FROM x)")
    ('read', ('person', 'x'))
    >>> classify_sql("UPDATE person SET name = ('x') WHERE id = 1")
    ('write', ('person',))
    >>> classify_sql("DELETE FROM public.person WHERE id = 1")
    ('write', ('person',))
    >>> classify_sql("SELECT now() FROM person")
    ('write', ('*',))
    >>> classify_sql("SELECT person.id FROM person FOR UPDATE")
    ('uncacheable', ())
    >>> classify_sql("SELECT 1")
    ('uncacheable', ())
    >>> classify_sql("CREATE TABLE t (id INT)")
    ('write', ('*',))
    >>> classify_sql("BEGIN")
    ('begin', ())
    >>> classify_sql("EXPLAIN SELECT person.id FROM person")
    ('neutral', ())
    >>> classify_sql("EXPLAIN ANALYZE UPDATE person SET name = 'x'")  # runs the UPDATE
    ('write', ('*',))
    """
    known = _memo.get(sql)
    if known is None:
        known = _classify(sql)
        if len(_memo) >= 4096:  # statements with inlined values are many: keep the memo bounded
            _memo.clear()
        _memo[sql] = known
    return known


def _classify(sql: str) -> tuple[str, tuple[str, ...]]:
    everything = (WRITE, (ALL_TABLES,))
    text = sql.strip().rstrip(";")
    if ";" in text:
        return everything  # several statements, or a literal we will not try to read
    first = _WORD.match(text)
    verb = first.group(1).upper() if first else ""
    if verb == "SELECT":
        for name in _CALL.findall(text):
            if name.lower() not in PURE:
                return everything  # a function may write, or not be repeatable (now(), random())
        if _INTO.search(text):
            return everything  # SELECT ... INTO creates a table
        if _LOCKING.search(text):
            return UNCACHEABLE, ()  # a locking read must reach the server
        tables = _sources(text)
        if not tables:
            return UNCACHEABLE, ()
        return READ, tables
    if verb == "EXPLAIN" and re.search(r"\bANALY[SZ]E\b", text, re.I):
        return everything  # EXPLAIN ANALYZE runs its statement
    if verb in _NEUTRAL:
        return NEUTRAL, ()
    if verb == "BEGIN" or (verb == "START" and re.match(r"\s*START\s+TRANSACTION\b", text, re.I)):
        return BEGIN, ()
    if verb == "ROLLBACK" and re.match(r"\s*ROLLBACK\s+TO\b", text, re.I):
        return NEUTRAL, ()
    table = _written_table(verb, text[first.end():] if first else "")
    return (WRITE, (table,)) if table else everything


def _normal(name: str) -> str:
    """A table's key: the last part of a qualified name, unquoted, lower case.

    Merging ``"Person"`` with ``person``, or the same name in two schemas,
    only makes invalidations wider.
    """
    last = re.split(r"\s*\.\s*(?=[\"`A-Za-z_])", name)[-1]
    return last.strip('"`').replace('""', '"').lower()


def _sources(text: str) -> tuple[str, ...] | None:
    """The tables after every FROM and JOIN, or () if one of them is not a plain name."""
    tables = set()
    for keyword in _SOURCE.finditer(text):
        at = keyword.end()
        while True:
            rest = text[at:].lstrip()
            if rest.startswith("("):
                break  # a subquery: its own FROM is found by the scan
            name = _NAME.match(text, at)
            if not name or _normal(name.group(1)) in _NOT_TABLES:
                return ()
            tables.add(_normal(name.group(1)))
            at = name.end()
            alias = _ALIAS.match(text, at)
            if alias and alias.group(1).strip('"`').lower() not in _CLAUSES:
                at = alias.end()
            after = text[at:].lstrip()
            if not after.startswith(","):
                break
            at = len(text) - len(after) + 1
    return tuple(sorted(tables))


_TARGET = {
    "INSERT": re.compile(rf"\s*(?:IGNORE\s+)?INTO\s+({_IDENT}(?:\s*\.\s*{_IDENT})*)", re.I),
    "REPLACE": re.compile(rf"\s*INTO\s+({_IDENT}(?:\s*\.\s*{_IDENT})*)", re.I),
    "UPDATE": re.compile(rf"\s*(?:ONLY\s+|LOW_PRIORITY\s+|IGNORE\s+)*({_IDENT}(?:\s*\.\s*{_IDENT})*)"
                         rf"(?:\s+(?:AS\s+)?{_IDENT})?\s+SET\b", re.I),
    "DELETE": re.compile(rf"\s*FROM\s+(?:ONLY\s+)?({_IDENT}(?:\s*\.\s*{_IDENT})*)"
                         rf"(?:\s+(?:AS\s+)?(?!WHERE\b|USING\b|RETURNING\b|ORDER\b|LIMIT\b){_IDENT})?"
                         rf"\s*(?:$|WHERE\b|USING\b|RETURNING\b|ORDER\b|LIMIT\b)", re.I),
}


def _written_table(verb: str, rest: str) -> str | None:
    """The one table an INSERT, UPDATE or DELETE writes, or None (then: every table)."""
    pattern = _TARGET.get(verb)
    match = pattern.match(rest) if pattern else None
    if not match or _normal(match.group(1)) in _NOT_TABLES:
        return None
    return _normal(match.group(1))
