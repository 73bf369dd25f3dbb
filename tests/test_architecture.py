"""The package's shape, read from its sources: layers import one way, no module imports itself
back (function-local imports included), and the dependencies declared are exactly those the
package imports."""

import ast
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "torch_mobilenets"

# Lowest first; a module may import its own layer and those before it.
LAYERS = ["nn", "models", "keras_io", "pretrained", "api", "cli"]
# Entry points are command line, though they sit at the top of the package.
ENTRY_POINTS = {"torch_mobilenets.__main__"}
# The version is a constant every layer may read.
LEAF = "torch_mobilenets._version"
RUNTIME_IMPORTS = {"torch", "numpy", "h5py", "safetensors", "PIL", "tqdm"}
# Optional: Keras for `torch-mobilenets parity` (the `keras` and `keras-cv` extras), and
# Windows' locking module.
OPTIONAL_IMPORTS = {
    "keras": {"torch_mobilenets.cli.parity"},
    "keras_cv": {"torch_mobilenets.cli.parity"},
    "tf_keras": {"torch_mobilenets.cli.parity"},  # Keras 2 files; installed without its deps
    "msvcrt": {"torch_mobilenets.pretrained.download"},
}
DISTRIBUTIONS = {"pillow": "PIL"}  # distribution name -> the module it installs


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    if module in ENTRY_POINTS:
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or module.rsplit(".", 1)[-1] in LAYERS else "api"


def imports(module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement, at any depth."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import x` imports module x when there is one; `from a import name`, a.
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found += [(name, node.lineno) for name in submodules or [base]]
    return found


def package_imports() -> dict[str, list[tuple[str, int]]]:
    return {
        m: [(i, line) for i, line in imports(m) if i.split(".")[0] == "torch_mobilenets"]
        for m in MODULES
    }


def test_the_layers_are_what_the_readme_says():
    assert {layer(m) for m in MODULES if m != LEAF} == set(LAYERS)
    assert layer("torch_mobilenets.nn.graph") == "nn"
    assert layer("torch_mobilenets.mobilenet_v2") == layer("torch_mobilenets") == "api"
    assert layer("torch_mobilenets.cli.parity") == layer("torch_mobilenets.__main__") == "cli"


def test_layers_import_one_way():
    wrong = []
    for module, found in package_imports().items():
        for imported, line in found:
            if imported == LEAF:
                continue
            if module == LEAF or LAYERS.index(layer(imported)) > LAYERS.index(layer(module)):
                wrong.append(
                    f"{module}:{line} ({layer(module)}) imports {imported} ({layer(imported)})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {
        m: {i for i, _ in found if i in MODULES and i != m}
        for m, found in package_imports().items()
    }
    unknown = {i for found in package_imports().values() for i, _ in found} - set(MODULES)
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported) :] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_dependencies_are_exactly_what_the_package_imports():
    third_party: dict[str, set[str]] = {}
    for module in MODULES:
        for imported, _ in imports(module):
            top = imported.split(".")[0]
            if top != "torch_mobilenets" and top not in sys.stdlib_module_names:
                third_party.setdefault(top, set()).add(module)
    for name, users in OPTIONAL_IMPORTS.items():
        assert third_party.pop(name, set()) <= users, f"{name} is optional outside {users}"
    assert set(third_party) == RUNTIME_IMPORTS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        requirement.split(">")[0].split("=")[0].split(";")[0].strip()
        for requirement in project["dependencies"]
    }
    assert {DISTRIBUTIONS.get(name, name) for name in declared} == RUNTIME_IMPORTS
    assert project["scripts"] == {"torch-mobilenets": "torch_mobilenets.cli:console"}
    assert {"keras", "keras-cv", "test", "lint"} <= set(project["optional-dependencies"])


DOCUMENTED = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_public_surface_is_what_the_docs_document():
    import importlib.util

    import hubconf
    import torch_mobilenets as tm

    docs = "\n".join(page.read_text() for page in DOCUMENTED)
    assert all(hasattr(tm, name) for name in tm.__all__)
    assert [name for name in tm.__all__ if name not in docs] == []
    public = {name for name in dir(tm) if not name.startswith("_")}
    layers = {"cli", "keras_io", "models", "nn", "pretrained", "mobilenet_v3_backbone"}
    assert public - layers == set(tm.__all__) - layers - {"__version__"}
    # No release shipped the old re-exporting paths; one path per name.
    for old in ("conversion", "saving", "predict"):
        assert importlib.util.find_spec(f"torch_mobilenets.{old}") is None
    for module in (tm.mobilenet_v1, tm.mobilenet_v2, tm.mobilenet_v3):
        assert callable(module.preprocess_input) and callable(module.decode_predictions)
    # One registry of families: the public constructors are made from it.
    from torch_mobilenets.models import FAMILIES

    assert list(tm.FAMILIES) == list(FAMILIES)
    assert tm.mobilenet_v2.MobileNetV2 is tm.MobileNetV2 is tm.FAMILIES["mobilenet_v2"]
    assert tm.FAMILIES["mobilenet"] is tm.MobileNet
    assert tm.FAMILIES["mobilenet_v3_small"] is tm.MobileNetV3Small
    assert tm.FAMILIES["mobilenet_v3_large"] is tm.MobileNetV3Large
    assert tm.FAMILIES["mobilenet_v3_backbone"] is tm.MobileNetV3Backbone
    assert tm.KerasPreprocessing.for_model(tm.MobileNetV2(weights=None)).size == (224, 224)
    entries = {
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "mobilenet_v3_small_backbone",
        "mobilenet_v3_large_backbone",
    }
    assert entries <= set(dir(hubconf))
    # Keras' signatures and defaults, weights="imagenet" included.
    import inspect

    parameters = inspect.signature(tm.MobileNetV3Small).parameters
    assert list(parameters)[:4] == ["input_shape", "alpha", "minimalistic", "include_top"]
    assert parameters["weights"].default == "imagenet"
    assert inspect.signature(tm.MobileNetV3Backbone).parameters["weights"].default is None
