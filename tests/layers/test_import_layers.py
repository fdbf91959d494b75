"""The package's layers run one way (README "Layout"), checked on the source's own imports, including the imports
inside functions that would otherwise hide a circle:

- a module imports only modules of its own layer and of the layers below it;
- the packages of one layer that are marked independent (``training`` / ``evaluation``, ``pmd`` / ``inference``)
  never import each other;
- nothing inside the package imports the ``api`` facade or the ``cli``;
- there are no import circles between modules (imports only for type checkers, under ``if TYPE_CHECKING:``, run
  nothing and make none; they must still respect the layers).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kgdistill

# Bottom to top. Each entry: the top-level names (a subpackage or a module of kgdistill) of one layer, and whether
# they are independent of each other.
LAYERS: list[tuple[tuple[str, ...], bool]] = [
    (("_version", "errors", "config", "io", "results", "runfolder"), False),
    (("runtime", "distributed"), False),
    (("data", "datasets"), False),
    (("models",), False),
    (("losses",), False),
    (("training", "evaluation"), True),
    (("store",), False),
    (("pmd", "inference"), True),
    (("jobs",), False),
    (("api", "__init__"), False),
    (("cli", "__main__"), False),
]


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((package, *parts))] = path
    return out


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], package: str, runtime_only: bool = False) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (top level, functions and, unless
    ``runtime_only``, under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[:len(here) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module: the module
                target = target.rpartition(".")[0]
            if target.split(".")[0] == package and target != name:
                found.add(target)
    return found


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(root: Path, package: str = "kgdistill", layers=LAYERS) -> list[str]:
    """Every import that breaks the layer order, and every import circle, as readable lines."""
    modules = _modules(root, package)
    level = {top: i for i, (tops, _) in enumerate(layers) for top in tops}
    independent = {top: i for i, (tops, alone) in enumerate(layers) if alone for top in tops}
    graph = {name: _imports(name, path, modules, package) for name, path in modules.items()}
    problems = []
    for name, targets in sorted(graph.items()):
        src = _top(name)
        if src not in level:
            problems.append(f"{name}: not in any layer (add it to LAYERS and the README's Layout)")
            continue
        for target in sorted(targets):
            dst = _top(target)
            if dst not in level:
                continue  # reported as a module of its own
            if level[dst] > level[src]:
                problems.append(f"{name} imports {target}: upward ({dst} is above {src})")
            elif src != dst and src in independent and independent.get(dst) == independent[src]:
                problems.append(f"{name} imports {target}: {src} and {dst} are independent")
    runtime = {name: _imports(name, path, modules, package, runtime_only=True) for name, path in modules.items()}
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in _cycles(runtime)]
    return problems


def test_layers_run_one_way_without_circles():
    assert violations(Path(kgdistill.__file__).parent) == []


def test_nothing_inside_the_package_imports_the_facade_or_the_cli():
    root = Path(kgdistill.__file__).parent
    modules = _modules(root, "kgdistill")
    users = {name: _imports(name, path, modules, "kgdistill") for name, path in modules.items()}
    for name, targets in users.items():
        if _top(name) in ("__init__", "api", "cli", "__main__"):
            continue
        assert not {t for t in targets if _top(t) in ("api", "cli")}, name


@pytest.fixture()
def fake_package(tmp_path) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", "low.py": "", "mid/__init__.py": "", "mid/a.py": "from ..low import x\n",
                      "mid/b.py": "def f():\n    from . import a\n", "side.py": "", "top.py": "import pkg.mid.b\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


FAKE_LAYERS = [(("low",), False), (("mid", "side"), True), (("top", "__init__"), False)]


def test_the_check_sees_upward_imports_inside_functions_siblings_and_circles(fake_package):
    assert violations(fake_package, "pkg", FAKE_LAYERS) == []
    (fake_package / "low.py").write_text("def g():\n    import pkg.top\n", encoding="utf-8")
    (fake_package / "mid" / "a.py").write_text("from . import b\n", encoding="utf-8")
    (fake_package / "side.py").write_text("from .mid.a import y\nif TYPE_CHECKING:\n    from .top import T\n",
                                          encoding="utf-8")
    (fake_package / "mid" / "c.py").write_text("if TYPE_CHECKING:\n    from .d import X\n", encoding="utf-8")
    (fake_package / "mid" / "d.py").write_text("from .c import Y\n", encoding="utf-8")  # type-only back: no circle
    found = violations(fake_package, "pkg", FAKE_LAYERS)
    assert "pkg.low imports pkg.top: upward (top is above low)" in found
    assert "pkg.side imports pkg.mid.a: side and mid are independent" in found
    assert "pkg.side imports pkg.top: upward (top is above side)" in found  # type-only imports keep the layers
    assert "import circle: pkg.mid.a -> pkg.mid.b" in found
    assert len(found) == 4
