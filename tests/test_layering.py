"""The package's layering, read from the source (ast; nothing is imported).

deberta_xf (impls/) is the core; deberta_xf.convert (convert/) and deberta_xf.parity (parity/) are built on it and
on nothing else of each other; impls/cli.py and impls/__main__.py are the command-line top layer above all three.
No module imports transformers (the reference is only ever run by the tests), and the module-level imports between
deberta_xf modules form no cycle. The top-level folders are never imported under their folder names.
"""

from __future__ import annotations

import ast
import dataclasses
import os

import pytest

from reference_cases import ROOT

# folder -> the package it is installed as (pyproject.toml [tool.setuptools.package-dir])
PACKAGE_DIRS = {"impls": "deberta_xf", "convert": "deberta_xf.convert", "parity": "deberta_xf.parity"}
CLI_LAYER = {"impls/cli.py", "impls/__main__.py"}
FOLDER_NAMES = ("impls", "convert", "parity")  # never importable as top-level names
SCANNED_FOR_FOLDER_NAMES = ("impls", "convert", "parity", "tests", "bench")


@dataclasses.dataclass(frozen=True)
class Import:
    file: str          # path relative to the repository root
    line: int
    target: str        # the absolute module name imported (best resolution: a module when one exists)
    deferred: bool     # inside a function body: runs when called, not at import time
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs
    dynamic: bool = False  # importlib.import_module("...") / __import__("...") with a constant name

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _python_files(folder: str) -> list[str]:
    out = []
    for directory, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        out += [os.path.relpath(os.path.join(directory, f), ROOT) for f in sorted(files) if f.endswith(".py")]
    return out


def _module_name(relpath: str) -> tuple[str, bool]:
    """impls/formats/tf_h5.py -> ("deberta_xf.formats.tf_h5", False); impls/formats/__init__.py ->
    ("deberta_xf.formats", True)."""
    parts = relpath[:-len(".py")].split(os.sep)
    package = PACKAGE_DIRS[parts[0]]
    rest = parts[1:]
    is_package = rest[-1] == "__init__"
    if is_package:
        rest = rest[:-1]
    return ".".join([package, *rest]), is_package


SOURCES = {path: _module_name(path) for folder in PACKAGE_DIRS for path in _python_files(folder)}
MODULES = {name for name, _ in SOURCES.values()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base_parts = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = base_parts[:len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        targets.append(candidate if candidate in MODULES else base)
    return targets


def imports_of(relpath: str, module: str | None = None, is_package: bool = False) -> list[Import]:
    """Every import statement of a file (and importlib.import_module / __import__ of a constant name)."""
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=relpath)
    module = module or relpath[:-3].replace(os.sep, ".")
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(relpath, node.lineno, alias.name, deferred, type_checking))
        elif isinstance(node, ast.ImportFrom):
            for target in _resolve_from(module, is_package, node):
                found.append(Import(relpath, node.lineno, target, deferred, type_checking))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append(Import(relpath, node.lineno, node.args[0].value, True, type_checking, dynamic=True))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, deferred, True)
            for child in node.orelse:
                visit(child, deferred, type_checking)
            return
        inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(tree, False, False)
    return found


IMPORTS = {path: imports_of(path, *SOURCES[path]) for path in SOURCES}


def _within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def _violations(paths, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{imp.where}: imports {imp.target}" + (" (inside a function)" if imp.deferred else "")
            for path in paths for imp in IMPORTS[path] if any(_within(imp.target, p) for p in forbidden)]


def _folder(path: str) -> str:
    return path.split(os.sep, 1)[0]


def test_the_scan_sees_the_package():
    assert {"deberta_xf", "deberta_xf.formats", "deberta_xf.torch.modeling_deberta_v2", "deberta_xf.convert",
            "deberta_xf.convert.convert", "deberta_xf.parity.harness", "deberta_xf.cli"} <= MODULES
    # the scanner resolves the forms the package uses
    verify = {i.target for i in IMPORTS[os.path.join("convert", "verify.py")]}
    assert {"deberta_xf.schema", "deberta_xf.formats", "deberta_xf.convert.convert"} <= verify
    cli = [i for i in IMPORTS[os.path.join("impls", "cli.py")] if _within(i.target, "deberta_xf.convert")]
    assert cli and all(i.deferred for i in cli)


def test_core_does_not_import_convert_or_parity():
    core = [p for p in SOURCES if _folder(p) == "impls" and p.replace(os.sep, "/") not in CLI_LAYER]
    bad = _violations(core, ("deberta_xf.convert", "deberta_xf.parity"))
    assert not bad, "the core (deberta_xf, impls/) must not depend on convert/ or parity/:\n  " + "\n  ".join(bad)


def test_convert_and_parity_do_not_import_each_other():
    bad = _violations([p for p in SOURCES if _folder(p) == "convert"], ("deberta_xf.parity",))
    bad += _violations([p for p in SOURCES if _folder(p) == "parity"], ("deberta_xf.convert",))
    assert not bad, "convert/ and parity/ are independent layers over the core:\n  " + "\n  ".join(bad)


def test_nothing_imports_transformers():
    bad = _violations(list(SOURCES), ("transformers",))
    assert not bad, "transformers is the reference, used only by the tests:\n  " + "\n  ".join(bad)


def _import_graph() -> dict[str, dict[str, Import]]:
    """module -> {imported deberta_xf module: the first import statement}, from module-level imports only (not in
    functions, not under `if TYPE_CHECKING:`)."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in MODULES}
    for path, (module, _) in SOURCES.items():
        for imp in IMPORTS[path]:
            if imp.deferred or imp.type_checking or imp.target not in MODULES or imp.target == module:
                continue
            graph[module].setdefault(imp.target, imp)
    return graph


def find_cycle(graph: dict[str, dict[str, Import]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = dfs(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_reports_a_cycle():
    imp = Import("x.py", 1, "b", False, False)
    assert find_cycle({"a": {"b": imp}, "b": {"c": imp}, "c": {"a": imp}, "d": {"a": imp}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": imp}, "b": {}, "c": {"a": imp, "b": imp}}) is None


def test_no_import_cycles_at_module_level():
    graph = _import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({graph[a][b].where})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle among module-level imports:\n  " + "\n  ".join(steps))


def test_folders_are_never_imported_by_their_folder_names():
    bad = []
    for folder in SCANNED_FOR_FOLDER_NAMES:
        for path in _python_files(folder):
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                bad += [f"{path}:{node.lineno}: imports {n} (use {PACKAGE_DIRS[n.split('.')[0]]}"
                        f"{n[len(n.split('.')[0]):]})"
                        for n in names if n.split(".")[0] in FOLDER_NAMES]
    assert not bad, ("impls/, convert/ and parity/ are installed as deberta_xf, deberta_xf.convert and "
                     "deberta_xf.parity; import them by those names:\n  " + "\n  ".join(bad))
