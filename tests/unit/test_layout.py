"""Imports go one way, down the layers of docs/architecture.md, with no exemption:

    launch/, bench/          entry points and launchers (the CLI, dev, tests' and the bench's
       |                     process launchers): may import any package below
    ingest/ committer/ gateway/   the services
       |
    flashsale/               plumbing the services share
       |
    config/                  settings and their errors
       |
    proto/                   the wire contract: pure, imports nothing of the project

A service reads another only through the committer's tables' one home (committer/schema.py).
The committer's machine is pure too, and nothing in production imports the tests. Every module of
the packages in UNIT_TESTED is imported (a `__main__`, run) by at least one unit test."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import REPO_ROOT

IO_MODULES = ("asyncio", "nats", "asyncpg", "aiohttp", "socket", "subprocess", "ssl", "selectors")
SERVICES = {"ingest", "committer", "gateway"}
BELOW_SERVICES = {"proto", "config", "flashsale"}
# What each top-level package may import of the project (itself included).
MAY_IMPORT: dict[str, set[str]] = {
    "proto": {"proto"},
    "config": {"config", "proto"},
    "flashsale": BELOW_SERVICES,
    **{service: BELOW_SERVICES | SERVICES for service in SERVICES},  # see SHARED_BY_SERVICES
    "launch": BELOW_SERVICES | SERVICES | {"launch"},
    "bench": BELOW_SERVICES | SERVICES | {"launch", "bench"},
}
PROJECT = set(MAY_IMPORT) | {"tests"}
# What one service may import of another: the committer's tables, read through their one home.
SHARED_BY_SERVICES = {"committer.schema"}
# The packages whose every module a unit test reaches (the services join once theirs all do).
UNIT_TESTED = ("proto", "config", "flashsale", "launch", "ingest", "committer", "gateway")


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a module imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PROJECT


def project_modules_imported(path: Path) -> set[str]:
    """Project modules (dotted) a module imports, `from a.b import c` counting as a.b."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in PROJECT}


def modules_of(package: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / package).rglob("*.py") if "results" not in p.parts)


def pure_modules() -> list[str]:
    proto = sorted(f"proto.{p.stem}" for p in (REPO_ROOT / "proto").glob("*.py") if p.stem != "__init__")
    return [*proto, "committer.step", "committer.memory", "committer.machine"]


@pytest.mark.parametrize("module", pure_modules())
def test_pure_modules_load_no_io(module: str):
    # A fresh interpreter, so what this test process already imported does not count.
    code = f"import sys, {module}; print(','.join(m for m in {IO_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_go_down_the_layers(package: str):
    wrong = {
        str(path.relative_to(REPO_ROOT)): sorted(project_imports(path) - MAY_IMPORT[package])
        for path in modules_of(package)
    }
    assert {path: found for path, found in wrong.items() if found} == {}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_reads_another_only_through_the_tables_schema(service: str):
    wrong = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in project_modules_imported(path)
            if m.split(".")[0] in SERVICES - {service} and m not in SHARED_BY_SERVICES)
        for path in modules_of(service)
    }
    assert {path: found for path, found in wrong.items() if found} == {}


def test_every_package_has_its_place_in_the_layers():
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")}
    assert packages - {"tests"} == set(MAY_IMPORT)


def unit_tested_modules() -> set[str]:
    """Modules the unit tests import, or run as `python -m` does (runpy.run_module)."""
    reached: set[str] = set()
    for path in (REPO_ROOT / "tests" / "unit").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                reached.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                reached.add(node.module)
                reached.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif (isinstance(node, ast.Call) and ast.unparse(node.func) == "runpy.run_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                reached.add(f"{node.args[0].value}.__main__")
    return reached


@pytest.mark.parametrize("package", UNIT_TESTED)
def test_every_module_is_reached_by_a_unit_test(package: str):
    reached = unit_tested_modules()
    modules = {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts) for p in modules_of(package)
               if p.stem != "__init__"}
    assert sorted(modules - reached) == []
