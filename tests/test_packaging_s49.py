"""What ``pip install medseg`` promises: every third-party module medseg imports is declared in pyproject.toml,
the declared lower bounds are not below the oldest versions the test suite passed with (session 49, a venv of
those floors), the code parses as Python 3.10 (``requires-python``), and nothing reads a file beside the package
that a wheel would not ship."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # 3.11+; the check itself needs no newer Python than the suite runs

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "medseg"

#: the oldest versions that passed the I/O, DICOM, export, evaluate, cells, plan, train and predict tests (or that
#: pip can install at all on CPython 3.11), and what failed below them
FLOORS = {
    "highdicom": ("0.27", "Segmentation.get_volume is 0.24+, CIELabColor.from_rgb 0.27+"),
    "pydicom": ("3.0.1", "highdicom needs pydicom>=3.0.1"),
    "typer": ("0.27.2", "typer.TyperException (the CLI's usage errors) is 0.27.2+"),
    "rich": ("13.8", "typer>=0.27 needs rich>=13.8"),
    "simpleitk": ("2.4", "SimpleITK 2.3 scales a micron NIfTI's spacing but not its origin"),
    "tifffile": ("2023.8.12", "older tifffile reads a truncated TIFF without raising"),
    "imagecodecs": ("2024.6.1", "2024.1.1 has no CPython 3.11 wheel"),
    "pillow": ("9.5", "the oldest Pillow tested with medseg.io.png"),
}

#: ``__file__`` in code (doctests aside) that reads no package data: the data folder's fallback lookup (optional,
#: None when absent) and a stack-frame check
FILE_USES = {"data.py", "infer/predict.py"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(req: str) -> str:
    return _canon(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)[1])


def _requirements(pyproject: dict) -> dict[str, str]:
    """Canonical distribution name -> its requirement string, the core ones and every extra's."""
    project = pyproject["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out = {}
    for r in reqs:
        out.setdefault(_name(r), r)
    return out


def _imported_top_names(pkg: Path) -> dict[str, str]:
    """Absolute top-level module names imported anywhere in ``pkg`` -> one file that imports it."""
    names = {}
    for f in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                names.setdefault(m.split(".")[0], str(f.relative_to(pkg)))
    return names


def undeclared_imports(pyproject: dict, pkg: Path = PKG) -> list[str]:
    """``module (file): distributions`` for every third-party import whose distribution pyproject does not name."""
    declared = set(_requirements(pyproject))
    dists = md.packages_distributions()
    missing = []
    for mod, where in sorted(_imported_top_names(pkg).items()):
        if mod in sys.stdlib_module_names or mod == pkg.name:
            continue
        owners = {_canon(d) for d in dists.get(mod, [])}
        if not owners & declared:
            missing.append(f"{mod} ({where}): {sorted(owners) or 'no installed distribution'}")
    return missing


def _lower_bound(req: str) -> tuple[int, ...] | None:
    m = re.search(r">=\s*([0-9][0-9.]*)", req)
    return tuple(int(p) for p in m[1].rstrip(".").split(".")) if m else None


def low_floors(pyproject: dict) -> list[str]:
    """The requirements whose declared lower bound is below the tested floor in :data:`FLOORS`."""
    reqs = _requirements(pyproject)
    bad = []
    for name, (floor, why) in FLOORS.items():
        have = _lower_bound(reqs.get(name, ""))
        if have is None or have < tuple(int(p) for p in floor.split(".")):
            bad.append(f"{reqs.get(name, name + ' (undeclared)')}: needs >={floor} ({why})")
    return bad


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_third_party_import_is_declared():
    assert undeclared_imports(_pyproject()) == []


def test_an_undeclared_import_is_found():
    """The check can fail: pyproject without tifffile (medseg.io.microscopy imports it) is caught."""
    broken = _pyproject()
    broken["project"]["dependencies"] = [r for r in broken["project"]["dependencies"] if _name(r) != "tifffile"]
    assert any(m.startswith("tifffile ") for m in undeclared_imports(broken))


def test_lower_bounds_are_the_tested_floors():
    assert low_floors(_pyproject()) == []


def test_an_old_floor_is_found():
    broken = _pyproject()
    broken["project"]["dependencies"] = [("typer>=0.12" if _name(r) == "typer" else r)
                                         for r in broken["project"]["dependencies"]]
    assert any(b.startswith("typer>=0.12") for b in low_floors(broken))


def test_requires_python_matches_the_syntax_used():
    """``requires-python`` says 3.10: every module must parse with 3.10's grammar (no ``except*``, no ``type X``)."""
    assert _pyproject()["project"]["requires-python"] == ">=3.10"
    for f in sorted(PKG.rglob("*.py")):
        ast.parse(f.read_text(encoding="utf-8"), filename=str(f), feature_version=(3, 10))


#: standard-library names that need Python 3.11 or newer (the ones medseg would plausibly reach for)
_NEWER_STDLIB = re.compile(r"\b(import tomllib|datetime\.UTC|from datetime import [^\n]*\bUTC\b|StrEnum|TaskGroup|"
                           r"ExceptionGroup|hashlib\.file_digest|contextlib\.chdir|itertools\.batched|"
                           r"from typing import [^\n]*\b(Self|Never|LiteralString|assert_never|override)\b)")


def test_no_stdlib_name_newer_than_python_3_10():
    hits = [f"{f.relative_to(PKG)}: {m[0]}" for f in sorted(PKG.rglob("*.py"))
            for m in _NEWER_STDLIB.finditer(f.read_text(encoding="utf-8"))]
    assert hits == []


def test_no_data_file_outside_what_the_wheel_ships():
    """The wheel holds medseg/**/*.py only: any other file in the package, ``importlib.resources`` or a new
    ``__file__``-relative path would be missing from ``pip install medseg``."""
    assert sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*") if p.is_file()
                  and p.suffix not in (".py", ".pyc")) == []
    uses = set()
    for f in sorted(PKG.rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        assert "importlib.resources" not in text and "pkgutil.get_data" not in text, f
        if any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(ast.parse(text))):
            uses.add(str(f.relative_to(PKG)))
    assert uses <= FILE_USES, sorted(uses - FILE_USES)
