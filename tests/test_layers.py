"""The house rules (README, Architecture): features stand on the foundation and talk only through it.

Every `qwythos.*` import in a library module (top-level or inside a function) is checked against
the one table below; a new edge between features fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = "core"
FEATURES = ("convert", "quantize", "mtp", "runtime", "export")
ENTRY_POINTS = ("cli", "demo", "commands")
OUTSIDE = ("tests", "testing", "bench", "scripts")
#: The only edges allowed between features: an HF source is converted before it is quantized.
FEATURE_EDGES = {("quantize", "convert")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _library_files() -> list[Path]:
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in OUTSIDE or rel.parts[0].startswith((".", "build")) or "data" == rel.parts[0]:
            continue
        out.append(rel)
    return out


def _module_of(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["qwythos", *parts])


def _imports(rel: Path) -> list[tuple[int, str]]:
    tree = ast.parse((ROOT / rel).read_text(), str(rel))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("qwythos")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qwythos"):
            if node.module == "qwythos":  # `from qwythos import x`: x is a layer
                found += [(node.lineno, f"qwythos.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _allowed(src: str, dst: str) -> bool:
    if src in ENTRY_POINTS:
        return True
    if dst == FOUNDATION:
        return src in (FOUNDATION, *FEATURES)
    if src == FOUNDATION:
        return False
    if src in FEATURES and dst in FEATURES:
        return src == dst or (src, dst) in FEATURE_EDGES
    return False


def test_every_import_follows_the_layers():
    bad = []
    for rel in _library_files():
        src = _layer(_module_of(rel))
        for line, mod in _imports(rel):
            dst = _layer(mod)
            if not _allowed(src, dst):
                bad.append(f"{rel}:{line}: {src or 'root'} -> {mod}")
    assert not bad, "imports across layers:\n" + "\n".join(bad)


#: core's rooms in order: each imports only itself and the rooms before it, so core has no circle
#: (the GGUF format knows nothing of the model; the llama.cpp binding stands on both).
CORE_ROOMS = ("errors", "limits", "fileio", "hub", "drafting", "gguf", "model", "llamacpp")


def _core_room(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == FOUNDATION else ""


def test_core_rooms_import_only_earlier_rooms():
    bad = []
    for rel in _library_files():
        src = _core_room(_module_of(rel))
        if not src:
            continue
        assert src in CORE_ROOMS, f"place core/{src} in CORE_ROOMS"
        for line, mod in _imports(rel):
            dst = _core_room(mod)
            if dst and CORE_ROOMS.index(dst) > CORE_ROOMS.index(src):
                bad.append(f"{rel}:{line}: core.{src} -> {mod}")
    assert not bad, "core rooms importing later rooms (a circle in the making):\n" + "\n".join(bad)


def test_the_table_knows_every_folder():
    """A new top-level package must be placed in the table above (or the check would skip it)."""
    known = {FOUNDATION, *FEATURES, *ENTRY_POINTS, *OUTSIDE, "data"}
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert folders <= known, f"place these in tests/test_layers.py: {sorted(folders - known)}"


@pytest.mark.parametrize(
    "bad", [("quantize", "runtime"), ("core", "mtp"), ("export", "runtime"), ("mtp", "export")]
)
def test_the_rule_refuses_known_bad_edges(bad):
    assert not _allowed(*bad)


def test_packaged_list_is_every_folder():
    """The root is mapped to `qwythos` (package-dir), where setuptools' finder cannot look, so the
    package list is written out: it must equal the folders that hold an __init__.py, or a new
    subpackage would import in an editable install and be missing from the wheel."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {"qwythos"} | {
        "qwythos." + ".".join(p.parent.relative_to(ROOT).parts)
        for p in ROOT.rglob("__init__.py")
        if p.parent != ROOT
        and p.relative_to(ROOT).parts[0] not in ("tests", "build")
        and ".git" not in p.parts
    }
    assert listed == found
