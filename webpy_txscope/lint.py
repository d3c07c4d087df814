"""Static checks for web.py + SQLObject code that can serve stale data.

One rule engine, :func:`check`, serves two front ends: the ``txscope-lint``
command (also ``python -m webpy_txscope.lint``) and the flake8 plugin
:class:`Flake8Checker` (codes ``TXS``).  Only the standard library is used and
nothing else from ``webpy_txscope`` is imported, so the lint runs wherever the
package is installed, even without a database driver.

Codes:

TXS101  a module builds a web.py application and uses SQLObject, but never
        gives that application the txscope processor or middleware.
TXS102  ``sqlhub.processConnection = ...`` at import time in a module that
        builds a web.py application.
TXS103  ``cacheValues = False`` in ``class sqlmeta`` (or ``sqlmeta.cacheValues
        = False``).
TXS104  ``.commit(`` inside ``except web.HTTPError``: the published recipe.

How TXS101 decides, all from source, never by importing it:

* "builds a web.py application": a call to ``web.application`` (also
  ``auto_application``, ``subdir_application``, ``subdomain_application``),
  however ``web`` or the name was imported.
* "uses SQLObject": the module imports ``sqlobject`` or ``webpy_txscope``,
  mentions ``sqlhub``, or defines a class with a ``SQLObject`` base; or it
  imports a module found next to it on disk (a local models module, looked up
  from the importing file's directory and its enclosing packages) that does
  one of these.
* "protected": ``<app>.add_processor(X)`` where X is a call of ``txscope``, a
  name bound to such a call anywhere in the module, a name imported from
  ``webpy_txscope`` (other than the bare factories), or a name imported from a
  local module that binds it in one of these ways; or ``TxScopeMiddleware``
  wrapping ``<app>.wsgifunc()`` (directly or through a name bound to it), or
  passed into ``<app>.wsgifunc(...)`` as middleware.  ``<app>`` is the name
  the ``web.application(...)`` call was assigned to.  An application protected
  in another module cannot be seen: mark it ``# noqa: TXS101``.

"Import time" (TXS102) is code a WSGI server runs when it imports the module:
everything outside function bodies and outside ``if __name__ == "__main__":``.

``# noqa`` and ``# noqa: TXS103`` on the reported line work as in flake8, in
both front ends.
"""
from __future__ import annotations

import argparse
import ast
import functools
import os
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = ["Finding", "check", "check_source", "main", "Flake8Checker"]

_APPLICATION_CLASSES = frozenset(
    {"application", "auto_application", "subdir_application", "subdomain_application"}
)
_FACTORIES = frozenset({"txscope", "TxScopeMiddleware"})
# Importing either means the module works with SQLObject models: this package
# does nothing else.
_SQLOBJECT_PACKAGES = frozenset({"sqlobject", "webpy_txscope"})


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


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain as written, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = {_dotted(test.left), _dotted(test.comparators[0])}
    constants = {getattr(test.left, "value", None), getattr(test.comparators[0], "value", None)}
    return "__name__" in sides and "__main__" in constants


def _import_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node a WSGI server executes when it imports the module."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # Decorators and defaults run at import time; the body does not.
            stack.extend(getattr(node, "decorator_list", []))
            stack.extend(d for d in node.args.defaults + node.args.kw_defaults if d)
            continue
        if isinstance(node, ast.If) and _is_main_guard(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _split_origin(origin: str) -> tuple[int, str]:
    """``"..pkg.mod"`` -> ``(2, "pkg.mod")``."""
    stripped = origin.lstrip(".")
    return len(origin) - len(stripped), stripped


def _find_module_file(importer: str | None, level: int, module: str) -> Path | None:
    """The local source file an import refers to, if it sits next to the importer."""
    if not importer or not os.path.isfile(importer):
        return None
    here = Path(importer).resolve().parent
    if level:
        if level - 2 >= len(here.parents):
            return None
        roots = [here.parents[level - 2] if level > 1 else here]
    else:
        # The importer's directory, then each enclosing package's parent.
        roots, directory = [here], here
        while (directory / "__init__.py").is_file() and directory.parent != directory:
            directory = directory.parent
            roots.append(directory)
    parts = [p for p in module.split(".") if p]
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


class _Module:
    """Facts about one parsed module, gathered in a single walk; rules decide."""

    def __init__(self, tree: ast.AST, path: str | None) -> None:
        self.tree = tree
        self.path = path
        self.imports: dict[str, str] = {}  # local name -> "web.application", ".models.User"
        self.star_origins: list[str] = []
        self.imported_modules: list[str] = []  # origins that may be local modules
        self.calls: list[ast.Call] = []
        self.bindings: dict[int, list[str]] = {}  # id(value) -> dotted targets
        self.sqlobject_direct = False
        for node in ast.walk(tree):
            self._note(node)

    def _note(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _SQLOBJECT_PACKAGES:
                    self.sqlobject_direct = True
                local = alias.asname or alias.name.split(".")[0]
                self.imports[local] = alias.name if alias.asname else local
                self.imported_modules.append(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.split(".")[0] in _SQLOBJECT_PACKAGES:
                self.sqlobject_direct = True
            prefix = "." * node.level + (f"{module}." if module else "")
            if module:
                self.imported_modules.append(prefix.rstrip("."))
            for alias in node.names:
                if alias.name == "*":
                    self.star_origins.append(prefix.rstrip("."))
                    continue
                self.imports[alias.asname or alias.name] = prefix + alias.name
                self.imported_modules.append(prefix + alias.name)
        elif isinstance(node, ast.Call):
            self.calls.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None:
                names = [d for d in map(_dotted, targets) if d]
                self.bindings.setdefault(id(node.value), []).extend(names)
        elif isinstance(node, ast.ClassDef):
            if any((_dotted(b) or "").split(".")[-1] == "SQLObject" for b in node.bases):
                self.sqlobject_direct = True
        if (isinstance(node, ast.Name) and node.id == "sqlhub") or (
                isinstance(node, ast.Attribute) and node.attr == "sqlhub"):
            self.sqlobject_direct = True

    def origin(self, node: ast.AST) -> str | None:
        """Where a Name/Attribute chain comes from: ``w.application`` -> ``web.application``."""
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head in self.imports:
            head = self.imports[head]
        return f"{head}.{rest}" if rest else head

    def refers_to(self, node: ast.AST, package: str, names: Iterable[str],
                  bare: bool = True) -> bool:
        """Does ``node`` name one of ``names`` from ``package`` (or a submodule)?

        An unimported bare name counts when ``bare`` (the names are distinctive)
        or when the module star-imports from ``package``.
        """
        origin = self.origin(node)
        if origin is None:
            return False
        parts = origin.split(".")
        if parts[-1] not in names:
            return False
        if len(parts) > 1:
            return parts[0] == package
        star = any(o.split(".")[0] == package for o in self.star_origins)
        return origin not in self.imports and (bare or star)

    def is_application_call(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and self.refers_to(
            node.func, "web", _APPLICATION_CLASSES, bare=False)

    def targets_of(self, value: ast.AST) -> list[str]:
        return self.bindings.get(id(value), [])

    def local_module(self, origin: str) -> _Module | None:
        level, module = _split_origin(origin)
        found = _find_module_file(self.path, level, module)
        return _load(str(found)) if found else None

    def uses_sqlobject(self) -> bool:
        if self.sqlobject_direct:
            return True
        for origin in self.imported_modules:
            other = self.local_module(origin)
            if other is not None and other is not self and other.sqlobject_direct:
                return True
        return False

    def scope_names(self) -> set[str]:
        """Dotted names this module binds to a ``txscope(...)`` call."""
        return {target for call in self.calls
                if self.refers_to(call.func, "webpy_txscope", {"txscope"})
                for target in self.targets_of(call)}

    def is_scope_processor(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
        """Is ``node`` (an ``add_processor`` argument) the txscope processor?"""
        if isinstance(node, ast.Call):
            return self.refers_to(node.func, "webpy_txscope", {"txscope"})
        dotted = _dotted(node)
        if dotted is None:
            return False
        if dotted in self.scope_names():
            return True
        if dotted.split(".")[0] not in self.imports:
            return False
        origin = self.origin(node) or ""
        parts = origin.split(".")
        if parts[0] == "webpy_txscope":
            return parts[-1] not in _FACTORIES
        module_origin, _, name = origin.rpartition(".")
        key = f"{self.path}:{origin}"
        if not module_origin or key in seen:
            return False
        other = self.local_module(module_origin)
        return other is not None and other.is_scope_processor(ast.Name(id=name), seen | {key})


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, mtime_ns: int) -> _Module | None:
    try:
        with tokenize.open(path) as handle:
            return _Module(ast.parse(handle.read(), path), path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None


def _load(path: str) -> _Module | None:
    try:
        return _load_cached(path, os.stat(path).st_mtime_ns)
    except OSError:
        return None


# --- Rules: one function each, taking the module facts, yielding findings. ---

def _txs101_application_without_scope(module: _Module) -> Iterator[Finding]:
    applications = [c for c in module.calls if module.is_application_call(c)]
    if not applications or not module.uses_sqlobject():
        return
    protected: set[str] = set()  # dotted names the applications were bound to
    wrapped: list[ast.AST] = []  # everything passed to TxScopeMiddleware(...)
    wsgifuncs: list[tuple[str, ast.Call]] = []
    for call in module.calls:
        func = call.func
        if module.refers_to(func, "webpy_txscope", {"TxScopeMiddleware"}):
            for arg in call.args + [k.value for k in call.keywords]:
                wrapped.extend(ast.walk(arg))
        if not isinstance(func, ast.Attribute):
            continue
        receiver = _dotted(func.value) or ""
        if func.attr == "add_processor" and call.args and module.is_scope_processor(call.args[0]):
            protected.add(receiver)
        if func.attr == "wsgifunc":
            wsgifuncs.append((receiver, call))
            # app.wsgifunc(middleware...) applies each middleware to the app.
            if any(module.refers_to(n, "webpy_txscope", {"TxScopeMiddleware"})
                   for arg in call.args for n in ast.walk(arg)):
                protected.add(receiver)
    wrapped_ids = {id(n) for n in wrapped}
    wrapped_names = {n.id for n in wrapped if isinstance(n, ast.Name)}
    for receiver, call in wsgifuncs:
        if id(call) in wrapped_ids or wrapped_names & set(module.targets_of(call)):
            protected.add(receiver)
    protected.discard("")
    for call in applications:
        names = module.targets_of(call)
        if id(call) in wrapped_ids or protected & set(names):
            continue
        app = names[0] if names else "app"
        yield Finding(
            call.lineno, call.col_offset, "TXS101",
            f"web.py application {app!r} uses SQLObject without a per-request "
            "transaction, so each process serves rows cached before other "
            f"processes changed them; add {app}.add_processor(txscope(URI)) "
            f"or wrap {app}.wsgifunc() in TxScopeMiddleware")


def _txs102_import_time_process_connection(module: _Module) -> Iterator[Finding]:
    if not any(module.is_application_call(c) for c in module.calls):
        return
    for node in _import_time_nodes(module.tree):
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            if not (isinstance(target, ast.Attribute) and target.attr == "processConnection"):
                continue
            hub = module.origin(target.value) or ""
            if hub.split(".")[-1] != "sqlhub" and hub.split(".")[0] != "sqlobject":
                continue
            yield Finding(
                target.lineno, target.col_offset, "TXS102",
                f"{ast.unparse(target)} set at import time in a web.py application "
                "module: its object cache goes stale when other processes write; "
                "scope requests with app.add_processor(txscope(URI)) and set it "
                "only inside functions of scripts")


def _txs103_cache_values_off(module: _Module) -> Iterator[Finding]:
    message = ("cacheValues = False avoids stale reads by fetching every attribute "
               "on each access, which is slow; remove it and scope each request "
               "with app.add_processor(txscope(URI))")
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ClassDef) and node.name == "sqlmeta":
            for statement in node.body:
                if (isinstance(statement, (ast.Assign, ast.AnnAssign))
                        and statement.value is not None
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
                dotted = _dotted(target) or ""
                if dotted == "sqlmeta.cacheValues" or dotted.endswith(".sqlmeta.cacheValues"):
                    yield Finding(target.lineno, target.col_offset, "TXS103", message)


def _txs104_commit_on_http_error(module: _Module) -> Iterator[Finding]:
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        if not any(module.refers_to(t, "web", {"HTTPError"}) for t in caught):
            continue
        for inner in (n for statement in node.body for n in ast.walk(statement)):
            if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                    and inner.func.attr == "commit"):
                yield Finding(
                    inner.lineno, inner.col_offset, "TXS104",
                    "commit in `except web.HTTPError`: web.py turns every crash into "
                    "a 500 HTTPError, so this commits a crashed request's writes; use "
                    "txscope(URI), which rolls back on 5xx, or roll back when "
                    "web.ctx.status starts with '5'")


_RULES = (
    _txs101_application_without_scope,
    _txs102_import_time_process_connection,
    _txs103_cache_values_off,
    _txs104_commit_on_http_error,
)


def check(tree: ast.AST, filename: str | None = None) -> list[Finding]:
    """All findings for a parsed module, sorted by position.

    ``filename`` lets TXS101 read local modules next to it; noqa comments are
    not applied here (see :func:`check_source`).
    """
    module = _Module(tree, filename)
    return sorted(finding for rule in _RULES for finding in rule(module))


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


def check_source(source: str, filename: str | None = None) -> list[Finding]:
    """Parse and check source text, honouring ``# noqa`` on reported lines.

    Raises SyntaxError if the source does not parse.
    """
    findings = check(ast.parse(source, filename or "<unknown>"), filename)
    lines = re.split(r"\r\n?|\n", source)
    return [f for f in findings
            if not (f.line <= len(lines) and _suppressed(lines[f.line - 1], f.code))]


def _is_skipped_directory(path: Path) -> bool:
    return (path.name.startswith(".") or path.name in {"__pycache__", "site-packages"}
            or (path / "pyvenv.cfg").is_file())


def _python_files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        yield root
        return
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories
                                   if not _is_skipped_directory(Path(directory, d)))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory, name)


def main(argv: Sequence[str] | None = None) -> int:
    """``txscope-lint PATH...``: 0 clean, 1 findings, 2 usage or parse error."""
    parser = argparse.ArgumentParser(
        prog="txscope-lint",
        description="Find web.py + SQLObject code that can serve stale data "
                    "(codes TXS101-TXS104).")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="Python files or directories (searched for *.py)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        parser.error("no such file or directory: " + ", ".join(missing))
    status = 0
    for root in args.paths:
        for path in _python_files(Path(root)):
            try:
                with tokenize.open(path) as handle:
                    findings = check_source(handle.read(), str(path))
            except SyntaxError as error:
                print(f"{path}:{error.lineno or 1}:{error.offset or 1}: cannot parse: "
                      f"SyntaxError: {error.msg}", file=sys.stderr)
                status = 2
                continue
            except (OSError, UnicodeDecodeError, ValueError) as error:
                print(f"{path}: cannot read: {error}", file=sys.stderr)
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
