"""Static checks for web.py + SQLObject code that can serve stale data.

One rule engine, :func:`check`, serves two front ends: the ``txscope-lint``
command (also ``python -m webpy_txscope.lint``) and the flake8 plugin
:class:`Flake8Checker` (codes ``TXS``).  Only the standard library is used and
nothing else from ``webpy_txscope`` is imported, so the lint runs wherever the
package is installed, even without a database driver.

Codes:

TXS100  the file does not parse (Python 2, or syntax newer than this Python):
        it was not checked.  The other files still are, and what this one
        imports and whether it uses SQLObject are still read from its text.
TXS101  a web.py application uses SQLObject without a per-request
        transaction (the txscope processor or middleware, or a processor that
        opens ``.transaction()`` and binds ``sqlhub.threadConnection``).
TXS102  ``sqlhub.processConnection = ...`` at import time in a module of a
        web.py application, directly or in a function called at import time.
TXS103  ``cacheValues = False`` on a model of a web.py application.
TXS104  ``.commit(`` inside ``except web.HTTPError`` that does not look at the
        status: the published recipe, which commits crashed requests.
TXS105  ``.commit(`` inside ``except Exception`` (or ``BaseException``, or a
        bare ``except:``) that does not look at the status.
TXS106  ``.commit(`` run unconditionally in a ``finally:`` block that no
        ``except Exception`` (or ``BaseException``, or bare) rolled back.
TXS107  a model of a web.py application with its own ``_connection`` (or a
        module ``__connection__``) that is not a hub: it bypasses the
        per-request transaction.
TXS108  ``connectionForURI(..., cache=False)`` or a URI with ``cache=0`` in a
        web.py application: a slow workaround for stale reads.

"A web.py application" is a module that calls ``web.application`` (also
``auto_application``, ``subdir_application``, ``subdomain_application``),
however ``web`` or the name was imported, and every local module it imports,
transitively.  Local modules are found on disk from the checked file's
location: its directory, each enclosing package's parent, and the project
root (the directory above the file's top package).  Source is only read,
never imported.

"Uses SQLObject" (TXS101): the application's module or a local module it
imports, transitively, imports ``sqlobject`` or ``webpy_txscope``, mentions
``sqlhub``, or defines a class with a ``SQLObject`` base.

"Protected" (TXS101): ``<app>.add_processor(X)``, ``<app>.processors.append(X)``
or ``.insert(i, X)`` where X is a ``txscope(...)`` call, a name bound to one,
a name imported from ``webpy_txscope`` (other than the bare factories), a call
of a function that returns one of these (a factory), or a function that opens
``.transaction()`` and binds ``threadConnection`` (also inside
``web.loadhook``); or ``TxScopeMiddleware`` wrapping ``<app>.wsgifunc()``.
``<app>`` is every name the application goes by: the name it was assigned
to, the name another module imports it as, and the name a caller binds when a
function builds and returns it.  A scope added under ``if __name__ ==
"__main__":`` only protects an application built there too.  A
sub-application mounted in the URL mapping of another application is judged
with that application.

"Import time" (TXS102) is code a WSGI server runs when it imports the module:
everything outside function bodies and outside ``if __name__ == "__main__":``.
Test files (under ``tests``/``test`` or named ``test_*.py``, ``*_test.py``,
``conftest.py``) are checked for TXS100 only.  Scripts that no application
imports are not part of an application: TXS102, TXS103, TXS107 and TXS108
leave them alone.

``# noqa`` and ``# noqa: TXS103`` on the reported line work as in flake8, in
both front ends.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ._lint_project import (Module, Project, dotted, import_time_nodes, is_commit,
                            project_for, python_files, walk_body)

__all__ = ["Finding", "check", "check_source", "check_path", "main", "Flake8Checker"]

_FACTORIES = frozenset({"txscope", "TxScopeMiddleware"})
# Names whose presence in an except block means it tells a crash (5xx) from
# a deliberate HTTP answer, as the TXS104 message recommends.
_STATUS_WORDS = frozenset({"status", "_InternalError", "InternalError", "internalerror"})
# A print statement or `except E, name:`: the commonest reasons old code fails to parse.
_PYTHON2 = re.compile(r"^\s*print\s+[^(=\s]|except\s+[\w.]+\s*,\s*\w+\s*:", re.M)
# The schemes connectionForURI knows: a redis:// or http:// URL is not a connection.
_SQLOBJECT_URI = re.compile(r"(?:sqlite|postgres(?:ql)?|pgsql|psycopg2?|mysql|firebird|interbase|maxdb|sapdb|"
                            r"mssql|sybase|rdbhost)(?:\+\w+)?:", re.I)
_NO_CACHE_URI = re.compile(r"[?&;]cache=(?:0|false|no|off)\b", re.I)
_TEST_DIRECTORIES = frozenset({"test", "tests", "testing"})
_BIG_VALUE_COLUMNS = frozenset({"BLOBCol", "PickleCol"})
_TRY_NODES = (ast.Try, getattr(ast, "TryStar", ast.Try))  # try/except* from Python 3.11
_DEPTH = 4  # how far factories, re-exports and helper calls are followed


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: 1-based line, 0-based column (as in :mod:`ast`)."""

    line: int
    col: int
    code: str
    message: str

    @property
    def text(self) -> str:
        return f"{self.code} {self.message}"


@dataclass
class _Context:
    module: Module
    project: Project | None

    def local_module(self, module: Module, origin: str) -> Module | None:
        return self.project.local_module(module, origin) if self.project else None

    def importers(self, module: Module) -> list[Module]:
        return self.project.importers(module) if self.project else []

    def uses_sqlobject(self, module: Module) -> bool:
        if module.sqlobject_direct:
            return True
        if self.project is None:
            return False
        # The checked module's own imports: it may differ from the file on disk.
        return bool(self.project.local_paths(module) & self.project.sqlobject_paths)

    def in_application(self, module: Module) -> bool:
        """Does a web.py application run this module (and is it not a test)?"""
        if self.is_test(module):
            return False
        if module.application_calls():
            return True
        return bool(self.project and module.path in self.project.web_paths)

    def is_test(self, module: Module) -> bool:
        if module.path is None:
            return False
        path = module.path
        if self.project is not None:
            # From the project root's own name down: a tests/ directory
            # without __init__.py is a project root itself.
            try:
                path = path.relative_to(self.project.root.parent)
            except ValueError:
                pass
        name = path.name
        return (bool(_TEST_DIRECTORIES & set(path.parts[:-1])) or name == "conftest.py"
                or name.startswith("test_") or name.endswith(("_test.py", "_tests.py")))


# --- Resolving names to definitions, across modules. ---

def _function(ctx: _Context, module: Module, node: ast.AST,
              depth: int = 0) -> tuple[Module, ast.FunctionDef | ast.AsyncFunctionDef] | None:
    """The function definition a name or call target refers to, if local."""
    name = dotted(node)
    if name is None or depth > _DEPTH or module.tree is None:
        return None
    if name in module.functions and name not in module.imports:
        return module, module.functions[name]
    origin = module.origin(node) or ""
    module_origin, _, attribute = origin.rpartition(".")
    candidates = []
    if module_origin and name.split(".")[0] in module.imports:
        candidates.append(module_origin)
    if "." not in name:
        candidates.extend(module.star_origins)
    for candidate in candidates:
        other = ctx.local_module(module, candidate)
        if other is None or other.tree is None:
            continue
        if attribute in other.functions:
            return other, other.functions[attribute]
        if attribute in other.imports:  # re-exported from a third module
            return _function(ctx, other, ast.Name(id=attribute), depth + 1)
    return None


def _returns(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    return [n.value for n in walk_body(function.body)
            if isinstance(n, ast.Return) and n.value is not None]


def _opens_transaction(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A hand-written per-request scope: ``.transaction()`` bound as threadConnection."""
    nodes = list(walk_body(function.body))
    begins = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr in {"transaction", "doInTransaction"} for n in nodes)
    binds = any(isinstance(n, ast.Attribute) and n.attr == "threadConnection"
                and isinstance(n.ctx, ast.Store) for n in nodes)
    return begins and binds


def _is_scope(ctx: _Context, module: Module, node: ast.AST, depth: int = 0) -> bool:
    """Is ``node`` (what an application is given as a processor) a per-request scope?"""
    if depth > _DEPTH:
        return False
    if isinstance(node, ast.Call):
        if module.refers_to(node.func, "webpy_txscope", {"txscope"}):
            return True
        if module.refers_to(node.func, "web", {"loadhook", "unloadhook"}, bare=False):
            return any(_is_scope(ctx, module, a, depth + 1) for a in node.args)
        found = _function(ctx, module, node.func)
        # A factory: whatever it returns is what the application gets.
        return found is not None and any(
            _is_scope(ctx, found[0], value, depth + 1) for value in _returns(found[1]))
    name = dotted(node)
    if name is None:
        return False
    for value in module.assigned.get(name, []):
        if isinstance(value, ast.Call) and _is_scope(ctx, module, value, depth + 1):
            return True
    origin = (module.origin(node) or "").split(".")
    if origin[0] == "webpy_txscope":
        return origin[-1] not in _FACTORIES
    found = _function(ctx, module, node)
    if found is not None:
        return _opens_transaction(found[1])
    if name.split(".")[0] in module.imports:
        module_origin, _, attribute = ".".join(origin).rpartition(".")
        other = ctx.local_module(module, module_origin) if module_origin else None
        return other is not None and other.tree is not None and _is_scope(
            ctx, other, ast.Name(id=attribute), depth + 1)
    if "." not in name and name not in module.assigned:
        # `from db import *`, then add_processor(load_sqlo): look where it came from.
        for star in module.star_origins:
            other = ctx.local_module(module, star)
            if other is not None and other.tree is not None and (
                    name in other.assigned or name in other.imports) and _is_scope(
                    ctx, other, ast.Name(id=name), depth + 1):
                return True
    return False


# --- Which names an application goes by, and whether one of them is protected. ---

def _aliases(ctx: _Context, module: Module, call: ast.Call) -> list[tuple[Module, str]]:
    names = list(module.targets_of(call))
    found = [(module, n) for n in names]
    function = module.enclosing_function(call)
    if function is not None and any(
            v is call or dotted(v) in names for v in _returns(function)):
        # Built and returned by a function: its callers name the application.
        for other in [module, *ctx.importers(module)]:
            for caller in other.calls:
                target = _function(ctx, other, caller.func)
                # Compared by place: the checked module's tree is not the one
                # read from disk for the other modules.
                if target is not None and _same(target[0], module) and (
                        target[1].lineno, target[1].name) == (function.lineno, function.name):
                    found.extend((other, t) for t in other.targets_of(caller))
    if function is None:
        for other in ctx.importers(module):
            for local, origin in other.imports.items():
                module_origin, _, attribute = origin.rpartition(".")
                if attribute in names and _same(ctx.local_module(other, module_origin), module):
                    found.append((other, local))
                elif _same(ctx.local_module(other, origin), module):
                    found.extend((other, f"{local}.{n}") for n in names)
    return found


def _same(first: Module | None, second: Module) -> bool:
    return first is not None and first.path == second.path


def _protects(ctx: _Context, module: Module, app: str, script_only: bool) -> bool:
    """Is ``app`` given a scope in ``module``?

    Under ``if __name__ == "__main__":`` a scope only protects an application
    that is also built there (``script_only``): one built at import time is
    served by WSGI servers without it.
    """
    wrapped: list[ast.AST] = []
    wsgifuncs: list[ast.Call] = []
    guarded = module.main_guarded
    for call in module.calls:
        if id(call) in guarded and not script_only:
            continue
        func = call.func
        if module.refers_to(func, "webpy_txscope", {"TxScopeMiddleware"}):
            for arg in call.args + [k.value for k in call.keywords]:
                wrapped.extend(ast.walk(arg))
        if not isinstance(func, ast.Attribute) or not call.args:
            if isinstance(func, ast.Attribute) and func.attr == "wsgifunc" and dotted(func.value) == app:
                wsgifuncs.append(call)
            continue
        receiver = dotted(func.value)
        if func.attr == "add_processor" and receiver == app and _is_scope(ctx, module, call.args[0]):
            return True
        if (func.attr in {"append", "insert"} and receiver == f"{app}.processors"
                and _is_scope(ctx, module, call.args[-1])):
            return True
        if func.attr == "wsgifunc" and receiver == app:
            wsgifuncs.append(call)
            # app.wsgifunc(middleware...) applies each middleware to the app.
            if any(module.refers_to(n, "webpy_txscope", {"TxScopeMiddleware"})
                   for arg in call.args for n in ast.walk(arg)):
                return True
    wrapped_ids = {id(n) for n in wrapped}
    wrapped_names = {n.id for n in wrapped if isinstance(n, ast.Name)}
    return any(id(c) in wrapped_ids or wrapped_names & set(module.targets_of(c))
               for c in wsgifuncs)


def _mounted_in(module: Module, app: str) -> bool:
    """Is ``app`` an entry of a URL mapping in ``module``, which builds an application?"""
    if module.tree is None:
        # Unparseable (Python 2): a ``'/path', app`` pair in its text.
        name = re.escape(app.split(".")[-1])
        return "application(" in module.text and re.search(
            rf"""['"][^'"\n]*['"]\s*,\s*(?:\w+\.)?{name}\b""", module.text) is not None
    return bool(module.application_calls()) and any(
        isinstance(n, (ast.Tuple, ast.List)) and any(dotted(e) == app for e in n.elts)
        for n in ast.walk(module.tree))


def _mounted(ctx: _Context, module: Module, call: ast.Call) -> bool:
    """Is this application a sub-application, mounted in another one's URL mapping?

    web.py runs the parent's processors around the sub-application's
    handlers, so the parent decides (and carries the finding).
    """
    aliases = _aliases(ctx, module, call)
    aliases += [(other, name) for other in ctx.importers(module) if other.tree is None
                for name in module.targets_of(call)]
    return any(_mounted_in(other, name) for other, name in aliases
               if other.path != module.path or other.tree is None) or any(
        _mounted_in(module, name) for name in module.targets_of(call)
        if any(parent is not call for parent in module.application_calls()))


def _protected(ctx: _Context, module: Module, call: ast.Call) -> bool:
    for node in module.calls:
        if module.refers_to(node.func, "webpy_txscope", {"TxScopeMiddleware"}) and any(
                n is call for arg in node.args for n in ast.walk(arg)):
            return True
    script_only = id(call) in module.main_guarded
    return any(_protects(ctx, other, name, script_only and other.path == module.path)
               for other, name in _aliases(ctx, module, call))


# --- Rules: one function each, taking the context, yielding findings. ---

def _txs101_application_without_scope(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    applications = module.application_calls()
    # Tests build applications on purpose without a scope, or with one passed
    # in as a fixture the lint cannot follow.
    if not applications or ctx.is_test(module) or not ctx.uses_sqlobject(module):
        return
    for call in applications:
        if _mounted(ctx, module, call) or _protected(ctx, module, call):
            continue
        names = module.targets_of(call)
        app = names[0] if names else "app"
        yield Finding(
            call.lineno, call.col_offset, "TXS101",
            f"web.py application {app!r} uses SQLObject without a per-request "
            "transaction, so each process serves rows cached before other "
            "processes changed them and a crashed request keeps its writes; add "
            f"{app}.add_processor(txscope(URI)) or wrap {app}.wsgifunc() in "
            "TxScopeMiddleware")


def _is_hub(module: Module, node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    return (module.origin(node) or "").split(".")[-1].lower().endswith("hub")


def _sets_process_connection(ctx: _Context, module: Module,
                             function: ast.FunctionDef | ast.AsyncFunctionDef, depth: int = 0) -> bool:
    for node in walk_body(function.body):
        if (isinstance(node, ast.Attribute) and node.attr == "processConnection"
                and isinstance(node.ctx, ast.Store) and _is_hub(module, node.value)):
            return True
        if isinstance(node, ast.Call) and depth < _DEPTH:
            found = _function(ctx, module, node.func)
            if found is not None and found[1] is not function and _sets_process_connection(
                    ctx, found[0], found[1], depth + 1):
                return True
    return False


def _txs102_import_time_process_connection(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not ctx.in_application(module):
        return
    fix = ("scope requests with app.add_processor(txscope(URI)) and set it only "
           "inside functions of scripts")
    for node in import_time_nodes(module.tree):
        if (isinstance(node, ast.Attribute) and node.attr == "processConnection"
                and isinstance(node.ctx, ast.Store) and _is_hub(module, node.value)):
            yield Finding(
                node.lineno, node.col_offset, "TXS102",
                f"{ast.unparse(node)} set at import time in a module of a web.py "
                "application: its object cache goes stale when other processes "
                f"write; {fix}")
        elif isinstance(node, ast.Call):
            found = _function(ctx, module, node.func)
            if found is not None and _sets_process_connection(ctx, *found):
                yield Finding(
                    node.lineno, node.col_offset, "TXS102",
                    f"{ast.unparse(node.func)}() runs at import time in a module of a "
                    "web.py application and sets sqlhub.processConnection: its object "
                    f"cache goes stale when other processes write; {fix}")


def _txs103_cache_values_off(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not ctx.in_application(module):
        return
    message = ("cacheValues = False avoids stale reads by fetching every attribute "
               "on each access, which is slow; remove it and scope each request "
               "with app.add_processor(txscope(URI))")
    # cacheValues = False on a model with large BLOB/pickle columns keeps big
    # values out of memory: a memory choice, not a staleness workaround.
    big_values = {id(s) for model in ast.walk(module.tree) if isinstance(model, ast.ClassDef)
                  and any(isinstance(c, ast.Assign) and isinstance(c.value, ast.Call)
                          and (dotted(c.value.func) or "").split(".")[-1] in _BIG_VALUE_COLUMNS
                          for c in model.body)
                  for s in model.body}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ClassDef) and node.name == "sqlmeta" and id(node) not in big_values:
            for statement in node.body:
                if (isinstance(statement, (ast.Assign, ast.AnnAssign))
                        and isinstance(statement.value, ast.Constant)
                        and not statement.value.value):
                    targets = (statement.targets if isinstance(statement, ast.Assign)
                               else [statement.target])
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id == "cacheValues":
                            yield Finding(target.lineno, target.col_offset, "TXS103", message)
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
              and not node.value.value):
            for target in node.targets:
                name = dotted(target) or ""
                if name == "sqlmeta.cacheValues" or name.endswith(".sqlmeta.cacheValues"):
                    yield Finding(target.lineno, target.col_offset, "TXS103", message)


def _status_aware(statements: list[ast.stmt]) -> bool:
    """Does this block tell a crash (5xx) from a deliberate HTTP answer?"""
    return any((isinstance(n, ast.Attribute) and n.attr in _STATUS_WORDS)
               or (isinstance(n, ast.Name) and n.id in _STATUS_WORDS)
               for n in walk_body(statements))


def _handles_requests(ctx: _Context) -> bool:
    # A test's try/finally around its own fixture data is not a request's.
    if ctx.is_test(ctx.module):
        return False
    return ctx.module.imports_web() or ctx.uses_sqlobject(ctx.module)


def _txs104_commit_on_http_error(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not _handles_requests(ctx):
        return
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        if not any(module.refers_to(t, "web", {"HTTPError"}, bare=False) for t in caught):
            continue
        if _status_aware(node.body):
            continue
        for inner in walk_body(node.body):
            if is_commit(inner):
                yield Finding(
                    inner.lineno, inner.col_offset, "TXS104",
                    "commit in `except web.HTTPError`: web.py turns every crash into "
                    "a 500 HTTPError, so this commits a crashed request's writes; use "
                    "txscope(URI), which rolls back on 5xx, or roll back when "
                    "web.ctx.status starts with '5'")


def _txs105_commit_on_any_exception(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not _handles_requests(ctx):
        return
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.ExceptHandler):
            continue
        caught = ([] if node.type is None else
                  node.type.elts if isinstance(node.type, ast.Tuple) else [node.type])
        broad = node.type is None or any(
            isinstance(t, ast.Name) and t.id in {"Exception", "BaseException"}
            and t.id not in module.imports for t in caught)
        if not broad or _status_aware(node.body):
            continue
        what = "except:" if node.type is None else f"except {ast.unparse(node.type)}"
        for inner in walk_body(node.body):
            if is_commit(inner):
                yield Finding(
                    inner.lineno, inner.col_offset, "TXS105",
                    f"commit in `{what}`: this commits the writes of the request or "
                    "job that just failed; roll back there and commit only after "
                    "success (txscope(URI) does this per request)")


def _catches_failures(handler: ast.ExceptHandler) -> bool:
    """Bare, ``BaseException`` or ``Exception``: every crash of a request."""
    return handler.type is None or (isinstance(handler.type, ast.Name)
                                    and handler.type.id in {"Exception", "BaseException"})


def _is_rollback(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "rollback")


def _txs106_commit_in_finally(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not _handles_requests(ctx):
        return
    for node in ast.walk(module.tree):
        if not isinstance(node, _TRY_NODES):
            continue
        # After a handler of every failure rolled back, the transaction is
        # finished and the commit in `finally:` commits nothing (SQLObject
        # ignores a second commit): it only commits the success path.
        if any(_catches_failures(h) and any(_is_rollback(n) for n in walk_body(h.body))
               for h in node.handlers):
            continue
        for statement in node.finalbody:
            # A conditional commit chose on purpose; only a blind one is wrong.
            if isinstance(statement, (ast.If, ast.Try)):
                continue
            for inner in walk_body([statement]):
                if is_commit(inner):
                    yield Finding(
                        inner.lineno, inner.col_offset, "TXS106",
                        "commit in `finally:` runs after a failure that no `except` "
                        "rolled back, so it commits half-done writes; commit in "
                        "`else:` after success and roll back on any error "
                        "(txscope(URI) does this per request)")


def _txs107_model_with_own_connection(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not ctx.in_application(module) or not ctx.uses_sqlobject(module):
        return
    message = ("{name} = {value} gives this model its own connection, which the "
               "per-request transaction does not reach, so it reads from a cache "
               "other processes make stale; remove it and let sqlhub (bound per "
               "request by txscope) provide the connection")
    statements = [(s, "__connection__") for s in module.tree.body]
    statements += [(s, "_connection") for n in ast.walk(module.tree) if isinstance(n, ast.ClassDef)
                   for s in n.body]
    for statement, wanted in statements:
        if not isinstance(statement, ast.Assign):
            continue
        for target in statement.targets:
            if (isinstance(target, ast.Name) and target.id == wanted
                    and not _is_hub(module, statement.value)):
                yield Finding(target.lineno, target.col_offset, "TXS107", message.format(
                    name=wanted, value=ast.unparse(statement.value)))


def _txs108_connection_cache_off(ctx: _Context) -> Iterator[Finding]:
    module = ctx.module
    if module.tree is None or not ctx.in_application(module) or not ctx.uses_sqlobject(module):
        return
    message = ("{what} turns the connection's object cache off, a slow workaround "
               "for stale reads (every get() queries again); keep the cache and "
               "scope each request with app.add_processor(txscope(URI))")
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call):
            name = (dotted(node.func) or "").split(".")[-1]
            if name != "connectionForURI" and not name.endswith("Connection"):
                continue
            for keyword in node.keywords:
                if (keyword.arg == "cache" and isinstance(keyword.value, ast.Constant)
                        and not keyword.value.value):
                    yield Finding(node.lineno, node.col_offset, "TXS108",
                                  message.format(what=f"{name}(..., cache={keyword.value.value!r})"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQLOBJECT_URI.match(node.value):
            match = _NO_CACHE_URI.search(node.value)
            if match is not None:
                yield Finding(node.lineno, node.col_offset, "TXS108",
                              message.format(what=f"{match[0][1:]!r} in a URI"))


_RULES = (
    _txs101_application_without_scope,
    _txs102_import_time_process_connection,
    _txs103_cache_values_off,
    _txs104_commit_on_http_error,
    _txs105_commit_on_any_exception,
    _txs106_commit_in_finally,
    _txs107_model_with_own_connection,
    _txs108_connection_cache_off,
)


def _context(tree: ast.Module, filename: str | None, source: str | None) -> _Context:
    path = Path(filename).resolve() if filename and os.path.isfile(filename) else None
    if path is None:
        return _Context(Module(None, source or "", tree), None)
    project = project_for(path)
    cached = project.module(path)
    if source is not None and cached is not None and cached.text == source and cached.tree:
        # The file as on disk: the project has parsed it already.
        return _Context(cached, project)
    return _Context(Module(path, source or "", tree), project)


def check(tree: ast.AST, filename: str | None = None, source: str | None = None) -> list[Finding]:
    """All findings for a parsed module, sorted by position.

    ``filename`` lets the rules read the other modules of its project from
    disk; noqa comments are not applied here (see :func:`check_source`).
    """
    assert isinstance(tree, ast.Module), "check() takes the tree of a whole module"
    ctx = _context(tree, filename, source)
    return sorted(finding for rule in _RULES for finding in rule(ctx))


# flake8's own pattern, so both front ends agree on what a noqa comment means.
_NOQA = re.compile(r"# noqa(?::[\s]?(?P<codes>([A-Z]+[0-9]+(?:[,\s]+)?)+))?", re.I)


def _suppressed(line: str, code: str) -> bool:
    match = _NOQA.search(line)
    if match is None:
        return False
    if match.group("codes") is None:
        return True
    codes = [c for c in re.split(r"[,\s]+", match.group("codes")) if c]
    return code in codes or code.startswith(tuple(codes))


def _without_noqa(findings: list[Finding], source: str) -> list[Finding]:
    lines = re.split(r"\r\n?|\n", source)
    return [f for f in findings
            if not (f.line <= len(lines) and _suppressed(lines[f.line - 1], f.code))]


def check_source(source: str, filename: str | None = None) -> list[Finding]:
    """Parse and check source text, honouring ``# noqa`` on reported lines.

    Raises SyntaxError if the source does not parse (:func:`check_path`
    reports that as TXS100 instead).
    """
    path = Path(filename).resolve() if filename and os.path.isfile(filename) else None
    cached = project_for(path).module(path) if path else None
    if cached is not None and cached.text == source and cached.tree is not None:
        tree = cached.tree  # the file as on disk, parsed once for the whole project
    else:
        tree = ast.parse(source, filename or "<unknown>")
    return _without_noqa(check(tree, filename, source), source)


def check_path(path: str | os.PathLike[str]) -> list[Finding]:
    """Findings for one file; a file that does not parse gives one TXS100."""
    try:
        with tokenize.open(path) as handle:
            source = handle.read()
    except (SyntaxError, UnicodeDecodeError, ValueError) as error:
        return [Finding(1, 0, "TXS100", f"cannot decode this file ({error}): it was not checked")]
    try:
        return check_source(source, os.fspath(path))
    except (SyntaxError, ValueError) as error:  # ValueError: a null byte, before Python 3.11.4
        if not isinstance(error, SyntaxError):
            error = SyntaxError(str(error))
        hint = " (Python 2 code?)" if _PYTHON2.search(source) else ""
        return _without_noqa([Finding(
            error.lineno or 1, max((error.offset or 1) - 1, 0), "TXS100",
            f"cannot parse this file{hint}: SyntaxError: {error.msg}; it was not "
            "checked, but what it imports still counts for the other files")], source)


def main(argv: Sequence[str] | None = None) -> int:
    """``txscope-lint PATH...``: 0 clean, 1 findings (TXS100 included), 2 usage error."""
    parser = argparse.ArgumentParser(
        prog="txscope-lint",
        description="Find web.py + SQLObject code that can serve stale data or "
                    "commit crashed requests (codes TXS100-TXS108).")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="Python files or directories (searched for *.py)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        parser.error("no such file or directory: " + ", ".join(missing))
    status = 0
    for root in args.paths:
        for path in python_files(Path(root)):
            try:
                findings = check_path(path)
            except OSError as error:
                print(f"{path}: cannot read: {error.strerror}", file=sys.stderr)
                status = 2
                continue
            for finding in findings:
                print(f"{path}:{finding.line}:{finding.col + 1}: {finding.text}")
            if findings and status == 0:
                status = 1
    return status


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("webpy_txscope")
    except PackageNotFoundError:
        return "unknown"


class Flake8Checker:
    """flake8 AST plugin: the same rules as ``txscope-lint``, codes ``TXS``."""

    name = "webpy_txscope"
    version = _version()

    def __init__(self, tree: ast.AST, filename: str) -> None:
        self.tree = tree
        self.filename = filename

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        for finding in check(self.tree, self.filename):
            yield finding.line, finding.col, finding.text, type(self)


if __name__ == "__main__":
    sys.exit(main())
