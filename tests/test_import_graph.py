"""The layering of the source tree, read statically (ast) from the files: no cycles, no upward imports.

Why static: importing would hide a cycle that only a function-level import closes, and would cost
seconds; reading the files checks every import, wherever it sits, in well under a second.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("avatar3d", "data_prep")

# Packages below the prep layer (docs/architecture.md): they may not import data_prep.
BELOW_PREP = ("errors", "config", "rotation", "resources", "io", "face", "vision", "audio", "synth", "nerf",
              "gaussians", "motion", "dataset")
# The layer that uses a trained avatar: it goes through avatar3d.avatar, never avatar3d.train.
USES_AVATARS = ("render", "eval", "export", "avatar")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = REPO) -> dict[str, Path]:
    return {_module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (typing only: never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file: top level or inside a function)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "avatar3d" and len(parts) > 1 else ""


def test_no_import_cycles_between_modules() -> None:
    cycles = _cycles(_imports(_modules()))
    assert not cycles, "import cycles (break them by moving the shared piece down): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_render_eval_export_use_the_avatar_api_not_the_trainer() -> None:
    graph = _imports(_modules())
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                 if _subpackage(m) in USES_AVATARS and t.startswith("avatar3d.train"))
    assert not bad, f"import avatar3d.avatar (load_avatar, Avatar, AvatarBundle) instead: {bad}"


def test_nothing_below_the_prep_layer_imports_data_prep() -> None:
    graph = _imports(_modules())
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                 if _subpackage(m) in BELOW_PREP and t.startswith("data_prep"))
    assert not bad, f"data_prep writes the dataset; lower layers read it through avatar3d.dataset: {bad}"


def test_the_checker_sees_planted_cycles_and_upward_imports(tmp_path) -> None:
    """The checks above can fail: a cycle closed inside a function, a relative import, an upward import and
    a typing-only import (which must not count) are read as they are."""
    files = {
        "avatar3d/__init__.py": "",
        "avatar3d/render/__init__.py": "",
        "avatar3d/render/a.py": "from avatar3d.render import b\n",
        "avatar3d/render/b.py": "def f():\n    from . import a\n    from avatar3d.train.trainer import train\n",
        "avatar3d/train/__init__.py": "",
        "avatar3d/train/trainer.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from avatar3d.render import a\n",
        "avatar3d/nerf/__init__.py": "",
        "avatar3d/nerf/field.py": "import data_prep.track\n",
        "data_prep/__init__.py": "",
        "data_prep/track.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = _imports(_modules(tmp_path))
    assert _cycles(graph) == [["avatar3d.render.a", "avatar3d.render.b"]]
    assert graph["avatar3d.render.b"] >= {"avatar3d.render.a", "avatar3d.train.trainer"}
    assert "avatar3d.train.trainer" not in graph or not graph["avatar3d.train.trainer"]
    assert graph["avatar3d.nerf.field"] == {"data_prep.track"}
