"""The tests mirror the code (README "Layout"):

- every package of ``kgdistill`` that holds code has its folder of test modules, ``tests/<package>/``; the top-level
  modules (config, io, runtime, ...) have ``tests/core/``; besides those only ``tests/layers/`` (contracts over the
  whole tree, this one included) and ``tests/gpu/`` (the CUDA path) exist;
- every test module lives in one of those folders, one level down, and no two share a basename (pytest imports them
  by basename, without ``__init__.py`` files);
- no test module imports another: what tests share, fixtures and helpers, comes from ``tests/conftest.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import kgdistill

TESTS = Path(__file__).resolve().parents[1]
SOURCE = Path(kgdistill.__file__).resolve().parent
EXTRA = {"core": "the top-level modules", "layers": "contracts over the whole tree", "gpu": "the CUDA path"}


def code_packages(root: Path) -> dict[str, bool]:
    """Subpackage name -> whether it holds code (a module besides ``__init__.py``, or an ``__init__.py`` that is more
    than a docstring); ``datasets``, which holds only the bundled archives, does not."""
    out = {}
    for init in sorted(root.glob("*/__init__.py")):
        body = ast.parse(init.read_text(encoding="utf-8")).body
        more_than_a_docstring = any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)
        out[init.parent.name] = more_than_a_docstring or any(p.name != "__init__.py" for p in init.parent.rglob("*.py"))
    return out


def layout_problems(tests: Path, source: Path) -> list[str]:
    """Packages without their test folder, folders that mirror nothing, test modules out of place or sharing a name."""
    packages = code_packages(source)
    problems = [f"src/kgdistill/{name}: no tests/{name}/ with a test module" for name, has_code in packages.items()
                if has_code and not list((tests / name).glob("test_*.py"))]
    allowed = {name for name, has_code in packages.items() if has_code} | set(EXTRA)
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    problems += [f"tests/{name}/: not a package of kgdistill nor one of {sorted(EXTRA)}" for name in
                 sorted(folders - allowed)]
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        where = path.relative_to(tests)
        if len(where.parts) != 2:
            problems.append(f"tests/{where.as_posix()}: a test module belongs in tests/<package>/")
        if path.name in seen:
            problems.append(f"tests/{where.as_posix()}: same name as tests/{seen[path.name].as_posix()}")
        seen.setdefault(path.name, where)
    return problems


def imports_of_test_modules(tests: Path) -> list[str]:
    """Every import, anywhere in a test module or conftest (inside functions too), of another test module."""
    names = {p.stem for p in tests.rglob("test_*.py")} | {tests.name}
    problems = []
    for path in sorted(tests.rglob("*.py")):
        where = path.relative_to(tests).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    problems.append(f"{where}:{node.lineno}: relative import")
                    continue
                targets = [node.module or ""]
            else:
                continue
            problems += [f"{where}:{node.lineno}: imports {target}" for target in targets
                         if target.split(".")[0] in names]
    return problems


def test_every_package_has_its_test_folder_and_every_test_module_its_place():
    assert layout_problems(TESTS, SOURCE) == []


def test_no_test_module_imports_another():
    assert imports_of_test_modules(TESTS) == []


def test_the_checks_see_a_missing_folder_a_stray_module_a_shared_name_and_a_test_import(tmp_path):
    source, tests = tmp_path / "src", tmp_path / "tests"
    for rel, text in {"src/__init__.py": "", "src/alpha/__init__.py": "", "src/alpha/a.py": "",
                      "src/beta/__init__.py": "", "src/beta/b.py": "", "src/blobs/__init__.py": '"""Archives."""\n',
                      "tests/conftest.py": "", "tests/alpha/test_a.py": "from conftest import helper\n",
                      "tests/core/test_b.py": "import kgdistill\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    assert code_packages(source) == {"alpha": True, "beta": True, "blobs": False}
    assert layout_problems(tests, source) == ["src/kgdistill/beta: no tests/beta/ with a test module"]
    assert imports_of_test_modules(tests) == []
    (tests / "beta").mkdir()
    (tests / "beta" / "test_a.py").write_text("def f():\n    from test_b import x\n", encoding="utf-8")
    (tests / "test_loose.py").write_text("import tests.alpha.test_a\nfrom . import conftest\n", encoding="utf-8")
    (tests / "misc").mkdir()
    assert layout_problems(tests, source) == [
        "tests/misc/: not a package of kgdistill nor one of ['core', 'gpu', 'layers']",
        "tests/beta/test_a.py: same name as tests/alpha/test_a.py",
        "tests/test_loose.py: a test module belongs in tests/<package>/"]
    assert imports_of_test_modules(tests) == ["beta/test_a.py:2: imports test_b",
                                              "test_loose.py:1: imports tests.alpha.test_a",
                                              "test_loose.py:2: relative import"]
