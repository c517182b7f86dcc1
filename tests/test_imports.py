"""The shape of `core`: no import cycle among its modules (imports inside functions count) and no function over 60
lines."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from conftest import ROOT

CORE = ROOT / "core"
MAX_FUNCTION_LINES = 60


def module_name(path: Path, package_dir: Path) -> str:
    """core/training/rundir.py -> 'training.rundir'; a subpackage's __init__ is the package ('training'); the top
    package's own __init__ stays '__init__'."""
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imported_modules(node: ast.AST, package: str, modules: set[str], here: str) -> set[str]:
    """The package's modules that one import statement names: `import core.x.y`, `from core.x.y import z`,
    `from core.x import y` (y a module), and their relative forms; each target counts as the longest module that
    it names or lies inside (`from core.data import load_data` is the package `data`)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # `from . import x` / `from .x import y` inside the package
            anchor = ".".join([package, *here.split(".")[:-1]][: max(1, len(here.split(".")) - node.level + 1)])
            base = f"{anchor}.{base}" if base else anchor
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
        return set()
    prefix = f"{package}."
    found = set()
    for t in targets:
        if not t.startswith(prefix):
            continue
        parts = t[len(prefix):].split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                found.add(".".join(parts[:n]))
                break
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source (top level, functions, methods), with
    modules of subpackages named 'sub.module'.

    Read with `ast` rather than by importing, so an import that only runs inside a function is seen too."""
    package = package_dir.name
    paths = {module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        tree = ast.parse(paths[name].read_text(), filename=str(paths[name]))
        deps: set[str] = set()
        for node in ast.walk(tree):
            deps |= _imported_modules(node, package, modules, name)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None; graphlib (standard library) does the graph work."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(reversed(err.args[1]))  # graphlib lists it against the import direction
    return None


def long_functions(package_dir: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'module.function (N lines)' for every function or method, nested ones included, longer than `limit`."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{module_name(path, package_dir)}.{node.name} ({lines} lines)")
    return found


def test_core_has_no_import_cycle() -> None:
    graph = import_graph(CORE)
    assert {"data", "data.loader", "data.dataset", "data.synthetic", "data.csv_reader", "data.data_cache"} <= set(graph)
    assert "data.dataset" in graph["data.synthetic"] and "data.synthetic" in graph["data.loader"]  # the circle that was
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in core: " + " -> ".join(cycle)


def test_cycle_finder_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The checker itself can fail: a circle closed only by a function-level import (as data<->synthetic was)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"a"}, "c": {"a"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b"}
    (pkg / "b.py").write_text("def thing():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_length_checker_counts_nested_functions(tmp_path: Path) -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\nclass K:\n    def long(self):\n{body}\n")
    assert long_functions(tmp_path) == ["m.long (61 lines)"]


def test_no_function_in_core_over_60_lines() -> None:
    found = long_functions(CORE)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines in core: {', '.join(found)}"


@pytest.mark.parametrize("folder", ["components", "pages", "bench", "scripts", "tests"])
def test_no_function_elsewhere_over_60_lines(folder: str) -> None:
    """The pages, the app's components, the benchmarks, the scripts and the tests keep the same limit as core."""
    found = long_functions(ROOT / folder)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines in {folder}/: {', '.join(found)}"


# The layers of core, bottom first: a module may import its own package and the layers below it, never one above
# (pages -> views -> service -> compression/explain -> training -> inference -> data -> models -> util). The entry
# points (core/__init__.py, __main__.py, cli.py) sit on top.
LAYERS = [{"util"}, {"models"}, {"data"}, {"inference"}, {"training"}, {"compression", "explain"}, {"service"},
          {"views"}]
ENTRY_POINTS = {"__init__", "__main__", "cli"}


def layer_of(module: str) -> int:
    package = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import from a module to one in another package of its own layer or of a layer above."""
    bad = []
    for module, deps in sorted(graph.items()):
        if module in ENTRY_POINTS:
            continue
        for dep in sorted(deps):
            if dep in ENTRY_POINTS:
                bad.append(f"{module} -> {dep}")
            elif dep.split(".")[0] != module.split(".")[0] and layer_of(dep) >= layer_of(module):
                bad.append(f"{module} -> {dep}")
    return bad


def test_core_is_packages_with_only_entry_points_at_the_top() -> None:
    assert {p.stem for p in CORE.glob("*.py")} == ENTRY_POINTS
    packages = {p.parent.name for p in CORE.glob("*/__init__.py")}
    assert packages == set().union(*LAYERS)
    for package in packages:
        assert ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text())), (
            f"core/{package} has no docstring")


def test_core_imports_flow_down_the_layers() -> None:
    bad = upward_imports(import_graph(CORE))
    assert not bad, "imports against the layers: " + ", ".join(bad)


def test_layer_checker_sees_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "core"
    for sub in ("util", "views"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "util" / "fs.py").write_text("def f():\n    from core.views import table\n")
    (pkg / "views" / "table.py").write_text("from core.util.fs import f\n")
    graph = import_graph(pkg)
    assert graph["views.table"] == {"util.fs"} and graph["util.fs"] == {"views", "views.table"}
    assert upward_imports(graph) == ["util.fs -> views", "util.fs -> views.table"]
