"""The layering of docs/architecture.md, checked by reading every module's imports (ast, no import runs).

Every ``import`` and ``from ... import`` counts, at module level or inside a
function: an import hidden in a function is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "resnet_multi"
FRAMEWORKS = {"torch", "torchvision", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "mxnet", "h5py"}

# Layer -> the module-name prefixes that belong to it (longest prefix wins).
LAYERS = {
    "base": ("resnet_multi.errors", "resnet_multi.files", "resnet_multi.timing"),
    "arch": ("resnet_multi.arch",),
    "weights": ("resnet_multi.weights",),
    "backends": ("resnet_multi.backends",),
    "common": ("resnet_multi.backends.common",),
    "faces": ("resnet_multi.faces",),
    "numerics": ("resnet_multi.numerics",),
    "run": ("resnet_multi.run",),
    "training": ("resnet_multi.training",),
    "cli": ("resnet_multi.cli",),
    "api": ("resnet_multi",),  # the package's __init__: the public Python API
    "entry": ("resnet_multi.__main__", "resnet_multi.gpucheck"),
}
# Layer -> the layers it may import (besides itself). The core never imports a backend;
# a backend reaches the core only through its architecture and weights pieces and the base.
ALLOWED = {
    "base": {"base"},
    "arch": {"base"},
    "weights": {"arch", "base"},
    "common": {"weights", "arch", "base"},
    "backends": {"common", "arch", "weights", "base"},
    "faces": {"weights", "arch", "base"},
    "numerics": {"faces", "weights", "arch", "base"},
    "training": {"faces", "weights", "arch", "base"},
    "run": {"numerics", "faces", "weights", "arch", "base"},
    "cli": {"run", "training", "numerics", "faces", "weights", "arch", "base"},
    "api": {"run", "faces", "weights", "arch", "base"},
    "entry": {"cli", "run"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    best, length = "api", 0
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    return best


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [alias.name for alias in node.names]
            # `from pkg import submodule` depends on the submodule, not on pkg's __init__
            subs = [n for n in names if f"{base}.{n}" in MODULES]
            found += [(f"{base}.{n}", [], node.lineno) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest:
                found.append((base, rest, node.lineno))
    return found


def project_edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in imports(module):
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_module_is_read():
    assert "resnet_multi.faces" in MODULES and "resnet_multi.backends.torch.model" in MODULES
    assert len(MODULES) > 40


def test_no_import_cycles():
    assert cycles(project_edges()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_a_module():
    bad = []
    for module in MODULES:
        bound = {}  # local name -> project module it stands for
        for target, names, line in imports(module):
            if target.startswith("resnet_multi"):
                bad += [f"{module}:{line} imports {n} from {target}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
        tree = ast.parse(MODULES[module].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("resnet_multi")):
                for alias in node.names:
                    bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("resnet_multi") and alias.asname:
                        bound[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert bad == []


def test_core_imports_no_framework_and_no_backend():
    bad = []
    for module in MODULES:
        if layer_of(module) in ("backends", "common"):
            continue
        for target, _, line in imports(module):
            if target.split(".")[0] in FRAMEWORKS or target.startswith("resnet_multi.backends"):
                bad.append(f"{module}:{line} imports {target}")
    assert bad == []


# Inside a backend: the file -> the files of the same backend it may import (weights.py maps a
# live model's variables but never builds one, so model <-> weights is no cycle).
BACKEND_FILES = {"weights": set(), "model": {"weights"}, "files": {"model", "weights"},
                 "train": {"model", "weights"}, "infer": {"model", "weights"},
                 "bench": {"model", "weights", "train", "infer"}}


@pytest.mark.parametrize("name", ["torch", "tensorflow", "flax", "mxnet"])
def test_every_backend_has_the_same_files_and_directions(name):
    files = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith(f"resnet_multi.backends.{name}.")}
    assert files == set(BACKEND_FILES)
    bad = []
    for part, allowed in BACKEND_FILES.items():
        module = f"resnet_multi.backends.{name}.{part}"
        for target, _, line in imports(module):
            if target.startswith(f"resnet_multi.backends.{name}.") and target.rsplit(".", 1)[1] not in allowed:
                bad.append(f"{module}:{line} imports {target}")
    assert bad == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    layer = layer_of(module)
    bad = []
    for target, _, line in imports(module):
        if not target.startswith("resnet_multi"):
            continue
        other = layer_of(target)
        if other != layer and other not in ALLOWED[layer]:
            bad.append(f"line {line}: {layer} layer imports {target} ({other} layer)")
        if layer == "backends" and other == "backends" and target.split(".")[2] != module.split(".")[2]:
            bad.append(f"line {line}: one backend imports another: {target}")
    assert bad == []
