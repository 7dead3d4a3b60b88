"""The import rule of shared/DESIGN.md section 3: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edge_agent"

ALLOWED: dict[str, set[str]] = {
    "formats": {"formats"},
    "camera": {"formats", "camera"},
    "storage": {"formats", "camera", "storage"},
    "link": {"formats", "camera", "link"},
    "api": {"formats", "storage", "api"},
    "device": {"formats", "camera", "storage", "link", "api", "device"},
    "collector": {"formats", "collector"},
    "commands": {"formats", "camera", "storage", "link", "api", "device", "collector", "commands"},
}
"""Layer -> the layers its modules may import from `edge_agent` (the root `__init__` is open to all)."""


def layer_of(module_path: Path, package: Path = PACKAGE) -> str:
    """The layer a module belongs to: the first folder under `edge_agent/`."""
    parts = module_path.relative_to(package).parts
    return parts[0] if len(parts) > 1 else ""


def imported_layers(source: str) -> list[tuple[int, str, str]]:
    """(line, imported module, its layer) for every `edge_agent.<layer>...` import in the source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "edge_agent":
                names = [f"edge_agent.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "edge_agent" and len(parts) > 1 and parts[1] != "__version__":
                found.append((node.lineno, name, parts[1]))
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    """Every import in the package that breaks the rule, as `path:line imports module (layer X may not)`."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        layer = layer_of(path, package)
        if not layer:
            continue
        for line, module, target in imported_layers(path.read_text()):
            if target not in ALLOWED[layer]:
                where = path.relative_to(package.parent)
                problems.append(f"{where}:{line} imports {module} (layer {layer} may not import {target})")
    return problems


def test_every_module_sits_in_a_known_layer() -> None:
    strays = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if layer_of(p) not in ALLOWED and p.name != "__init__.py"
    ]
    assert strays == []


def test_imports_point_down_the_layers() -> None:
    assert violations() == [], "\n".join(violations())


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "edge_agent" / "formats" / "wire.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("import os\nfrom edge_agent.device.agent import Agent\n")
    (tmp_path / "edge_agent" / "collector").mkdir()
    (tmp_path / "edge_agent" / "collector" / "x.py").write_text("from edge_agent import camera\n")
    assert violations(tmp_path / "edge_agent") == [
        "edge_agent/collector/x.py:1 imports edge_agent.camera (layer collector may not import camera)",
        "edge_agent/formats/wire.py:2 imports edge_agent.device.agent (layer formats may not import device)",
    ]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_is_a_folder(layer: str) -> None:
    assert (PACKAGE / layer / "__init__.py").is_file()


def test_the_device_command_line_does_not_load_the_collector() -> None:
    """`edge-agent run` builds the whole parser at each start: the CSU side (console, argon2, PostgreSQL
    driver) must not come along into the device's memory."""
    import subprocess
    import sys

    probe = (
        "import sys; from edge_agent.commands.cli import build_parser; build_parser();"
        "print(sorted(m for m in sys.modules if m.startswith('edge_agent.collector')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
