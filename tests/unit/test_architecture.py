"""The dependency direction of STYLE.md, enforced: `domain` ← `services` ← `loops`, `http`;
adapters import only `domain` (and the leaf modules); only the composition root builds adapters.

Walks every module of `mailsvc/` with `ast` (imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mailsvc"
# modules every layer may use: errors, settings, logging helpers, the one waiting helper, telemetry handles
LEAVES = {"mailsvc.errors", "mailsvc.settings", "mailsvc.logs", "mailsvc.waiting", "mailsvc.instruments"}
# the process's entry points and wiring: they may build adapters (bootstrap) or call one directly (CLIs)
ENTRY_POINTS = {"mailsvc.bootstrap", "mailsvc.cli", "mailsvc.producer", "mailsvc.templates_cli", "mailsvc.__main__"}
# what talks to the outside world: never imported by domain, services or loops (adapters wrap them)
DRIVERS = ("redis", "sqlalchemy", "asyncpg", "aiosmtplib", "starlette", "uvicorn", "jinja2", "httpx")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module_name(path)] = names
    return found


IMPORTS = imports()


LAYERS = {"domain", "services", "loops", "http", "adapters", "ops"}


def layer(module: str) -> str:
    """`domain`, `services` … for a module inside a layer package; the module itself otherwise."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else module


def violations(source_layer: str, allowed: set[str], *, drivers_allowed: bool = True) -> list[str]:
    """`source_layer`'s imports of mailsvc modules outside `allowed` layers/modules (and of drivers)."""
    found = []
    for module, names in IMPORTS.items():
        if layer(module) != source_layer:
            continue
        for name in sorted(names):
            if name.startswith("mailsvc"):
                if name == "mailsvc" or layer(name) in allowed or name in allowed or name in LEAVES:
                    continue
                found.append(f"{module} imports {name}")
            elif not drivers_allowed and name.split(".")[0] in DRIVERS:
                found.append(f"{module} imports the driver {name}")
    return found


def test_the_walk_sees_the_package() -> None:
    assert "mailsvc.domain.transitions" in IMPORTS
    assert "mailsvc.adapters.postgres.queue_store" in IMPORTS
    assert layer("mailsvc.adapters.postgres.queue_store") == "adapters"
    assert layer("mailsvc.bootstrap") == "mailsvc.bootstrap"


@pytest.mark.parametrize(
    ("source", "allowed", "drivers"),
    [
        ("domain", {"domain"}, False),
        ("adapters", {"domain", "adapters"}, True),
        ("services", {"domain", "services"}, False),
        ("loops", {"domain", "services", "loops"}, False),
        ("http", {"domain", "services", "http"}, True),
    ],
)
def test_dependencies_point_down(source: str, allowed: set[str], drivers: bool) -> None:
    assert violations(source, allowed, drivers_allowed=drivers) == []


def test_only_the_entry_points_import_adapters() -> None:
    importing = {
        module
        for module, names in IMPORTS.items()
        if layer(module) != "adapters" and any(name.startswith("mailsvc.adapters") for name in names)
    }
    assert importing <= ENTRY_POINTS


def test_the_operator_client_knows_only_the_public_api() -> None:
    assert violations("ops", {"ops"}) == []


def test_the_product_never_imports_the_development_tooling() -> None:
    """`bench` and `devtools` are not in the image; only the CLI dispatches to them, guarded."""
    importing = {
        module
        for module, names in IMPORTS.items()
        if any(name.split(".")[0] in ("bench", "devtools", "tests") for name in names)
    }
    assert importing <= {"mailsvc.cli"}
