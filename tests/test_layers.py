"""The package's shape, checked: sub-packages import only the ones below them, no cycles,
heavy libraries only inside functions, and an intake that needs no image or tensor library.

The order is the README's ("Architecture"): the render side (a1111 → tasks → config →
models → engines → render) is the bottom of the house because it must run anywhere without the file
side; the file side builds on it in the order a file travels: clips → prepare → deliver →
journal → queue → ops, with the live rules (which prepare, delivery and the queue ask) and a
clip's render state below them all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "daemon"
LAYERS: list[set[str]] = [
    {"errors"},  # what kind of problem an error is (the core's writers ask it too)
    {"__init__", "atomic", "paths", "libraries", "platform_seam"},  # the core all may use
    {"intake"},  # names, stability, watching, pairing, jobs: no image library
    {"a1111", "media"},  # A1111's behaviour as pure functions; video files in and out
    {"controlnet"},  # the ControlNet extension's units, infotext, preprocessors (pure)
    {"temporal"},  # a clip's frames kept consistent: keys, optical flow, warped noise (pure)
    {"tasks"},  # kinds of work, one module each: keys, companions, canvas, outputs (pure)
    {"families"},  # model families, one module each: pipelines, guidance, what they follow
    {"config"},
    {"models"},
    {"engines"},
    {"render"},
    {"live"},  # the live rules (live: true), asked by prepare, delivery and the queue
    {"clips"},  # a clip's render state: its seed, its key frame, its progress
    {"prepare"},
    {"deliver"},
    {"journal"},  # the journal, the state folder's lock, and recovery after a crash
    {"queue"},
    {"ops"},
    {"cli"},
    {"__main__"},
]
HEAVY = {
    "torch", "diffusers", "transformers", "onnxruntime", "onnx", "av", "skimage",
    "safetensors", "huggingface_hub", "peft", "scipy", "torchsde", "accelerate", "ray",
    "controlnet_aux", "cv2", "tokenizers", "gguf",
}  # fmt: skip
"""Libraries that take seconds to import: only inside the functions that need them, so that
``check``, ``status`` and the pure tests start fast."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "daemon":
                    found.extend((f"daemon.{a.name}", in_function) for a in child.names)
                else:
                    found.append((child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _own(target: str) -> str | None:
    """The package module an import names (``daemon.x.y.Name`` → ``daemon.x.y``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert _layer(module) >= 0, module


def test_no_package_imports_one_above_it() -> None:
    wrong = []
    for module, path in MODULES.items():
        for target, _ in _imports(path):
            own = _own(target) if target.startswith("daemon") else None
            if own is None or _package(own) == _package(module):
                continue
            if _layer(own) >= _layer(module):
                wrong.append(f"{module} imports {own}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {
        module: {
            own
            for target, _ in _imports(path)
            if target.startswith("daemon") and (own := _own(target)) and own != module
        }
        for module, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = [*trail[trail.index(module) :], module]
            pytest.fail("import cycle: " + " → ".join(cycle))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_only_heavy_libraries_are_imported_inside_functions() -> None:
    wrong = []
    for module, path in MODULES.items():
        for target, in_function in _imports(path):
            heavy = target.split(".")[0] in HEAVY
            if in_function != heavy and not (heavy and _type_checking_only(path, target)):
                where = "inside a function" if in_function else "at the top"
                wrong.append(f"{module}: {target} imported {where}")
    assert not wrong, "\n".join(wrong)


def _type_checking_only(path: Path, target: str) -> bool:
    """A heavy library named at the top only for type hints (``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if isinstance(child, ast.Import) and any(a.name == target for a in child.names):
                    return True
                if isinstance(child, ast.ImportFrom) and child.module == target:
                    return True
    return False


def test_the_intake_side_imports_no_image_or_tensor_library() -> None:
    intake = [m for m in MODULES if m.startswith("daemon.intake")]
    code = (
        f"import sys; import {', '.join(intake)}; "
        "print(sorted({'PIL', 'numpy', 'torch'} & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
