"""The import graph of gpunet, read statically (every import statement, lazy ones inside functions too):
the rules that keep `ops/` a contract with engines under it (README, Layout; docs/ops.md).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gpunet"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The gpunet modules `name` imports anywhere in its source (`from pkg import sub` counts as sub)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle():
    """One import cycle as a list of modules, or None."""
    state: dict = {}
    stack: list = []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(GRAPH):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in GRAPH[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def test_the_walk_sees_the_packages():
    assert {"gpunet.backend", "gpunet.ops.checks", "gpunet.ops.numpy.conv.taps", "gpunet.cuda.ops"} <= set(MODULES)
    assert "gpunet.ops.numpy.conv" in GRAPH["gpunet.ops.numpy"]
    assert "gpunet.cuda.ops" in GRAPH["gpunet.backend"]                 # a lazy import counts


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_cuda_side_does_not_reach_back_to_the_backend():
    for m in ("gpunet.cuda.ops", "gpunet.cuda.loader", "gpunet.cuda.emulator", "gpunet.ops.numpy"):
        assert "gpunet.backend" not in _reaches(m), m


@pytest.mark.parametrize("user", ["gpunet.functional", *sorted(m for m in MODULES if m.startswith("gpunet.optim"))])
def test_functional_and_optim_import_no_engine_or_private_module(user):
    for m in GRAPH[user]:
        assert not m.startswith(("gpunet.ops", "gpunet.cuda")), f"{user} imports {m}"
        assert not any(part.startswith("_") for part in m.split(".")), f"{user} imports {m}"
    package = user.rpartition(".")[0]
    for node in ast.walk(ast.parse(MODULES[user].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(package + "."):
            assert not any(a.name.startswith("_") for a in node.names), f"{user}: from {node.module} import _..."


def test_the_contract_imports_no_engine():
    for m in ("gpunet.ops.interface", "gpunet.ops.geometry", "gpunet.ops.checks"):
        assert not {n for n in _reaches(m) if n.startswith(("gpunet.ops.numpy", "gpunet.cuda"))}, m


def test_one_device_alias_table():
    """Only gpunet/backend.py spells the device names out; everyone else takes them from there."""
    spelled = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"cpu", "cuda"} <= keys or {"cuda", "gpu"} <= keys:
                    spelled.append(name)
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"auto", "cpu", "cuda", "emulator"} <= items:
                    spelled.append(name)
    assert spelled == ["gpunet.backend", "gpunet.backend"], spelled


KERNEL_PLUMBING = {"gpunet.cuda.loader", "gpunet.cuda.emulator", "gpunet.cuda._emu_source", "gpunet.cuda.nvrtc",
                   "gpunet.cuda"}


def test_one_validation_site_per_op():
    """The engines' facades call gpunet.ops.checks; the implementations and launchers below them do not
    (they trust the facade) and no longer carry their own copies of the dtype or shape checks."""
    facades = {"gpunet.ops.numpy", "gpunet.cuda.ops"}
    for name, path in MODULES.items():
        src = path.read_text(encoding="utf-8")
        uses = "gpunet.ops.checks" in GRAPH[name] or "gpunet.ops import checks" in src
        if name.startswith(("gpunet.ops.numpy", "gpunet.cuda")) and name not in KERNEL_PLUMBING:
            assert uses == (name in facades), name
            for needle in ("float32 or float64", "expected dy of shape", "int32 argmax", "same_dtype(", "_geometry("):
                assert needle not in src or name in facades or needle == "_geometry(", (name, needle)
    for name in ("gpunet.ops.numpy.pool", "gpunet.ops.numpy.batchnorm", "gpunet.ops.numpy.conv",
                 "gpunet.cuda.pool", "gpunet.cuda.batchnorm", "gpunet.cuda.conv2d", "gpunet.cuda.dropout"):
        src = MODULES[name].read_text(encoding="utf-8")
        for geometry_check in ("pool2d_geometry(", "batch_norm_geometry(", "dropout_args("):
            assert geometry_check not in src, (name, geometry_check)
