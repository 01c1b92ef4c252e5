"""Imports go one way: proto (the wire contract) and the committer's pure machine import nothing
that does I/O; plumbing (flashsale/) never imports the services built on it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import REPO_ROOT

IO_MODULES = ("asyncio", "nats", "asyncpg", "aiohttp", "socket", "subprocess", "ssl", "selectors")
SERVICES = {"ingest", "committer", "gateway", "bench"}
# Entry points and launchers may start any service; the rest of flashsale/ is plumbing.
FLASHSALE_ENTRY_POINTS = {"cli.py", "__main__.py", "testing.py"}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a module imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & (SERVICES | {"proto", "config", "flashsale", "tests"})


def pure_modules() -> list[str]:
    proto = sorted(f"proto.{p.stem}" for p in (REPO_ROOT / "proto").glob("*.py") if p.stem != "__init__")
    return [*proto, "committer.machine"]


@pytest.mark.parametrize("module", pure_modules())
def test_pure_modules_load_no_io(module: str):
    # A fresh interpreter, so what this test process already imported does not count.
    code = f"import sys, {module}; print(','.join(m for m in {IO_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_proto_imports_nothing_of_the_project():
    for path in (REPO_ROOT / "proto").glob("*.py"):
        assert project_imports(path) <= {"proto"}, path.name


def test_plumbing_does_not_import_services():
    for path in (REPO_ROOT / "flashsale").glob("*.py"):
        if path.name not in FLASHSALE_ENTRY_POINTS:
            assert not project_imports(path) & SERVICES, path.name


def test_production_code_never_imports_tests():
    for package in (*SERVICES, "proto", "config", "flashsale"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            assert "tests" not in project_imports(path), path
