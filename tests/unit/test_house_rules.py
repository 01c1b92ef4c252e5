"""The house rules a reader can count (the developers' guide): no production module over
MODULE_LINES_MAX lines and no function over FUNCTION_LINES_MAX, read with the AST; and no file of
code or docs that cites an issue or a former state. Code and docs say what is and why; how it
came to be is in git."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from config.settings import REPO_ROOT
from tests.unit.test_layout import modules_of

PRODUCTION = ("proto", "config", "flashsale", "launch", "committer", "ingest", "gateway", "bench")
MODULE_LINES_MAX = 400
FUNCTION_LINES_MAX = 60  # from `def` to the last line of the body, nested functions included

NOT_TEXT = (".png", ".jpg", ".jpeg", ".gif", ".ico", ".woff", ".woff2")
# What cites history rather than saying what is: an issue or one of its findings by number, a
# state "until" / "since" / "before" an issue or a flashsale release, and a rename in passing.
HISTORY = re.compile("|".join((
    r"\bissues?\s*#?\d",
    r"\bfindings?\s*#?\d",
    r"\b(?:until|since|before|after|as of)\s+(?:the\s+)?(?:issue|finding)s?\b",
    r"\b(?:until|since|before|as of)\s+flashsale\s+v?\d",
    r"\b(?:formerly|used to be|renamed from)\b",
    r"\(was [A-Za-z_.]+\)",
)), re.IGNORECASE)


def production_modules() -> list[Path]:
    return [path for package in PRODUCTION for path in modules_of(package)]


def function_lengths(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function and method, nested ones too."""
    return [
        (node.name, node.lineno, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def code_and_docs() -> list[Path]:
    """Every file git tracks or would add, but images and this one (whose examples are history)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, cwd=REPO_ROOT, check=True).stdout
    paths = (REPO_ROOT / line for line in listed.splitlines())
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() not in NOT_TEXT
                  and p != Path(__file__).resolve())


@pytest.mark.parametrize("package", PRODUCTION)
def test_no_production_module_is_over_its_length(package: str):
    long = {str(p.relative_to(REPO_ROOT)): n for p in modules_of(package)
            if (n := len(p.read_text().splitlines())) > MODULE_LINES_MAX}
    assert long == {}


@pytest.mark.parametrize("package", PRODUCTION)
def test_no_function_is_over_its_length(package: str):
    long = [f"{p.relative_to(REPO_ROOT)}:{line} {name} ({n} lines)" for p in modules_of(package)
            for name, line, n in function_lengths(ast.parse(p.read_text()))
            if n > FUNCTION_LINES_MAX]
    assert long == []


def test_the_length_of_a_function_counts_its_nested_ones():
    tree = ast.parse("def outer():\n    def inner():\n        return 1\n    return inner\n")
    assert function_lengths(tree) == [("outer", 1, 4), ("inner", 2, 2)]


def test_no_code_or_doc_cites_an_issue_or_a_former_state():
    cited = [f"{p.relative_to(REPO_ROOT)}:{i}: {line.strip()[:100]}" for p in code_and_docs()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), start=1)
             if HISTORY.search(line)]
    assert cited == []


@pytest.mark.parametrize("line", [
    "# see Issue 12, finding 3", "as it was until issue 8", "refused before flashsale 0.2",
    "Services (was Ingest)", "this field is formerly known as x",
])
def test_history_is_recognised(line: str):
    assert HISTORY.search(line)


@pytest.mark.parametrize("line", [
    "the database exists before flashsale starts", "kernels before 5.5",
    "the writer is no longer the lease holder", "a client gives up after 0.3 s",
])
def test_what_is_is_not_taken_for_history(line: str):
    assert not HISTORY.search(line)
