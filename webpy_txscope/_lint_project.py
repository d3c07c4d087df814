"""What txscope-lint knows about an application's modules, read from source.

A :class:`Module` holds the facts of one file, gathered in one walk; a
:class:`Project` is the directory tree a file belongs to, with the local import
graph between its files.  The rules in :mod:`webpy_txscope.lint` ask them
questions such as "which function does this name refer to" or "is this module
imported by a web.py application", so that a model, a connection or a
protection written in one module counts for the others.

The graph is read from each file's text (its import lines), so a project is
indexed without parsing every file; a file is parsed when a rule looks into
it.  A file that does not parse (Python 2, newer syntax) still takes part the
same way: its imports and whether it uses SQLObject come from its text, so one
unparseable module never hides what the others show.
"""
from __future__ import annotations

import ast
import functools
import os
import re
import tokenize
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:  # typing.TypeGuard is Python 3.10+; annotations are not evaluated
    from typing import TypeGuard

APPLICATION_CLASSES = frozenset(
    {"application", "auto_application", "subdir_application", "subdomain_application"}
)
# Importing either means the module works with SQLObject models: this package
# does nothing else.
SQLOBJECT_PACKAGES = frozenset({"sqlobject", "webpy_txscope"})
# A project bigger than this is not indexed as a whole: the rules then see a
# module and what it imports, but not who imports it.
MAX_PROJECT_FILES = 3000

# What a file imports and whether it uses SQLObject, from its text (see the module docstring).
_TEXT_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(?P<from>[.\w]+)[ \t]+import[ \t]*(?P<names>\([^)]*\)|[^\n#;]*)"
    r"|import[ \t]+(?P<mods>[\w. \t,]+))", re.M)
_TEXT_SQLOBJECT = re.compile(
    r"^[ \t]*(?:from|import)[ \t]+(?:sqlobject|webpy_txscope)\b|\(\s*[\w.]*SQLObject\b|\bsqlhub\b", re.M)


def dotted(node: ast.AST | None) -> str | None:
    """``a.b.c`` for a Name/Attribute chain as written, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def is_main_guard(node: ast.If) -> bool:
    test = node.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = {dotted(test.left), dotted(test.comparators[0])}
    constants = {getattr(test.left, "value", None), getattr(test.comparators[0], "value", None)}
    return "__name__" in sides and "__main__" in constants


def import_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
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
        if isinstance(node, ast.If) and is_main_guard(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def walk_body(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Nodes of these statements, not descending into nested functions or classes."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))


def is_commit(node: ast.AST) -> TypeGuard[ast.Call]:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "commit")


class Module:
    """Facts about one source file, gathered in a single walk; rules decide."""

    def __init__(self, path: Path | None, text: str, tree: ast.Module | None,
                 error: SyntaxError | None = None) -> None:
        self.path = path
        self.text = text
        self.tree = tree
        self.error = error
        self.imports: dict[str, str] = {}  # local name -> "web.application", ".models.User"
        self.star_origins: list[str] = []
        self.imported_modules: list[str] = []  # origins that may be local modules
        self.calls: list[ast.Call] = []
        self.bindings: dict[int, list[str]] = {}  # id(value) -> dotted targets
        self.assigned: dict[str, list[ast.AST]] = {}  # dotted target -> values
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self._parents: dict[int, ast.AST] | None = None
        self.sqlobject_direct = False
        if tree is None:
            self._note_text(text)
            return
        for node in ast.walk(tree):
            self._note(node)

    def _note_text(self, text: str) -> None:
        self.sqlobject_direct = any(w in text for w in ("sqlobject", "SQLObject", "sqlhub", "webpy_txscope")) and bool(
            _TEXT_SQLOBJECT.search(text))
        for match in _TEXT_IMPORT.finditer(text):
            if match["from"]:
                origin = match["from"]
                self.imported_modules.append(origin)
                separator = "" if origin.strip(".") == "" else "."
                for name in match["names"].strip("()").split(","):
                    name = name.split()[0] if name.split() else ""
                    if name and name != "*":
                        self.imported_modules.append(f"{origin}{separator}{name}")
            else:
                self.imported_modules.extend(
                    m.split()[0] for m in match["mods"].split(",") if m.strip())

    def _note(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in SQLOBJECT_PACKAGES:
                    self.sqlobject_direct = True
                local = alias.asname or alias.name.split(".")[0]
                self.imports[local] = alias.name if alias.asname else local
                self.imported_modules.append(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.split(".")[0] in SQLOBJECT_PACKAGES:
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
                names = [d for d in map(dotted, targets) if d]
                self.bindings.setdefault(id(node.value), []).extend(names)
                for name in names:
                    self.assigned.setdefault(name, []).append(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # Nested and method names too: a factory's inner processor is
            # looked up by name from the factory's return statement.
            self.functions.setdefault(node.name, node)
        elif isinstance(node, ast.ClassDef):
            # SQLObject, InheritableSQLObject, so.SQLObject
            if any((dotted(b) or "").endswith("SQLObject") for b in node.bases):
                self.sqlobject_direct = True
        if (isinstance(node, ast.Name) and node.id == "sqlhub") or (
                isinstance(node, ast.Attribute) and node.attr == "sqlhub"):
            self.sqlobject_direct = True

    def origin(self, node: ast.AST) -> str | None:
        """Where a Name/Attribute chain comes from: ``w.application`` -> ``web.application``."""
        name = dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
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
            node.func, "web", APPLICATION_CLASSES, bare=False)

    def application_calls(self) -> list[ast.Call]:
        return [c for c in self.calls if self.is_application_call(c)]

    def targets_of(self, value: ast.AST) -> list[str]:
        return self.bindings.get(id(value), [])

    @functools.cached_property
    def main_guarded(self) -> frozenset[int]:
        """Nodes that run only when the module runs as a script."""
        if self.tree is None:
            return frozenset()
        return frozenset(id(n) for statement in self.tree.body
                         if isinstance(statement, ast.If) and is_main_guard(statement)
                         for n in walk_body(statement.body))

    def enclosing_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        if self.tree is None:
            return None
        if self._parents is None:
            # Built on first use: most modules are never asked.
            self._parents = {id(child): parent for parent in ast.walk(self.tree)
                             for child in ast.iter_child_nodes(parent)}
        current = self._parents.get(id(node))
        while current is not None:
            if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return current
            current = self._parents.get(id(current))
        return None

    def imports_web(self) -> bool:
        return any(o.split(".")[0] == "web" for o in list(self.imports.values()) + self.star_origins)


def _parse(path: Path) -> Module:
    try:
        with tokenize.open(path) as handle:
            text = handle.read()
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        # Undecodable: no text to go on either.
        return Module(path, "", None, SyntaxError("cannot decode"))
    try:
        return Module(path, text, ast.parse(text, str(path)))
    except (SyntaxError, ValueError) as error:
        syntax = error if isinstance(error, SyntaxError) else SyntaxError(str(error))
        return Module(path, text, None, syntax)


@functools.lru_cache(maxsize=4096)
def _load_cached(path: str, mtime_ns: int) -> Module:
    return _parse(Path(path))


def load(path: Path) -> Module | None:
    try:
        return _load_cached(str(path), os.stat(path).st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=8192)
def _sketch_cached(path: str, mtime_ns: int) -> Module:
    try:
        with tokenize.open(path) as handle:
            text = handle.read()
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        text = ""
    return Module(Path(path), text, None)


def sketch(path: Path) -> Module | None:
    """A module's text facts only (imports, SQLObject by regex): no parse.

    What the project needs of every file (the import graph); a file is parsed
    only when a rule looks into it.
    """
    try:
        return _sketch_cached(str(path), os.stat(path).st_mtime_ns)
    except OSError:
        return None


def _is_skipped_directory(path: Path) -> bool:
    return (path.name.startswith(".") or path.name in {"__pycache__", "site-packages", "node_modules"}
            or (path / "pyvenv.cfg").is_file())


def python_files(root: Path) -> Iterator[Path]:
    """``*.py`` under ``root``, skipping hidden directories, virtual environments and caches."""
    if not root.is_dir():
        yield root
        return
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories
                                   if not _is_skipped_directory(Path(directory, d)))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory, name)


def project_root(path: Path) -> Path:
    """The directory a module's absolute imports start from: above its top package."""
    directory = path.resolve().parent
    while (directory / "__init__.py").is_file() and directory.parent != directory:
        if directory.parent.name in {"site-packages", "dist-packages"}:
            # An installed package is a project of its own, not its neighbours.
            return directory
        directory = directory.parent
    return directory


class Project:
    """The files under one root, and the local imports between them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        files = []
        for number, path in enumerate(python_files(root)):
            if number >= MAX_PROJECT_FILES:
                break
            files.append(path.resolve())
        self.files = files

    def module(self, path: Path) -> Module | None:
        return load(path)

    def resolve(self, importer: Module, origin: str) -> Path | None:
        """The local source file an import refers to, if there is one."""
        if importer.path is None:
            return None
        stripped = origin.lstrip(".")
        level = len(origin) - len(stripped)
        here = importer.path.parent  # already resolved
        if level:
            if level - 2 >= len(here.parents):
                return None
            roots = [here.parents[level - 2] if level > 1 else here]
        else:
            # The importer's directory, then each enclosing package's parent,
            # never above the project root.
            roots, directory = [here], here
            while ((directory / "__init__.py").is_file() and directory != self.root
                   and directory.parent != directory):
                directory = directory.parent
                roots.append(directory)
            if self.root not in roots:
                roots.append(self.root)
        parts = [p for p in stripped.split(".") if p]
        if not level and parts:
            # A namespace package (no __init__.py): ``pkg.mod`` from pkg/app.py.
            roots.extend(a.parent for a in [here, *here.parents][:4] if a.name == parts[0])
        for root in roots:
            base = root.joinpath(*parts)
            for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
                if candidate is not None and candidate.is_file():
                    return candidate
        return None

    def local_module(self, importer: Module, origin: str) -> Module | None:
        found = self.resolve(importer, origin)
        return self.module(found) if found else None

    def local_paths(self, module: Module) -> set[Path]:
        """The local files a module imports."""
        found = (self.resolve(module, origin) for origin in module.imported_modules)
        return {f for f in found if f is not None and f != module.path}

    @functools.cached_property
    def _edges(self) -> dict[Path, frozenset[Path]]:
        """Local imports between the project's files, read from their text."""
        edges: dict[Path, frozenset[Path]] = {}
        for path in self.files:
            text = sketch(path)
            if text is not None:
                found = (self.resolve(text, origin) for origin in text.imported_modules)
                edges[path] = frozenset(f for f in found if f is not None and f != path)
        return edges

    @functools.cached_property
    def _reverse_edges(self) -> dict[Path, list[Path]]:
        reverse: dict[Path, list[Path]] = {}
        for path, imported in self._edges.items():
            for other in imported:
                reverse.setdefault(other, []).append(path)
        return reverse

    def _reach(self, start: Iterable[Path], edges: dict[Path, Any]) -> frozenset[Path]:
        seen: set[Path] = set()
        stack = list(start)
        while stack:
            path = stack.pop()
            if path not in seen:
                seen.add(path)
                stack.extend(edges.get(path, ()))
        return frozenset(seen)

    @functools.cached_property
    def application_modules(self) -> list[Module]:
        candidates = (p for p in self.files if "application" in getattr(sketch(p), "text", ""))
        return [m for m in map(self.module, candidates)
                if m is not None and m.tree is not None and m.application_calls()]

    @functools.cached_property
    def web_paths(self) -> frozenset[Path]:
        """Files a web.py application runs: the modules that build one and all they import."""
        return self._reach((m.path for m in self.application_modules if m.path), self._edges)

    def importers(self, target: Module) -> list[Module]:
        """The project's modules that import ``target``."""
        if target.path is None:
            return []
        found = (self.module(p) for p in self._reverse_edges.get(target.path, []) if p != target.path)
        return [m for m in found if m is not None]

    @functools.cached_property
    def sqlobject_paths(self) -> frozenset[Path]:
        """Files that use SQLObject themselves or through what they import, transitively."""
        seeds = []
        for path in self.files:
            text = sketch(path)
            if text is not None and text.sqlobject_direct:  # a cheap test first, then the parse
                module = self.module(path)
                if module is not None and module.sqlobject_direct:
                    seeds.append(path)
        return self._reach(seeds, self._reverse_edges)


@functools.lru_cache(maxsize=64)
def _project_cached(root: str) -> Project:
    return Project(Path(root))


def project_for(path: Path) -> Project:
    """The project of a file.  Its file list is read once per process (a lint
    run); each module is re-read when its file changes."""
    return _project_cached(str(project_root(path)))
