"""The shape rule for agent/ and drivers/: no class over 400 lines, no function over 60.

Lengths are ``end_lineno - lineno + 1`` of the AST node (decorators not counted, docstrings
and comments inside counted). Methods and nested functions are functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "drivers")
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60
# (file relative to the repository, class name): classes that may be longer
CLASS_EXEMPT = {
    ("drivers/rfid/pn532_sim.py", "SimulatedPN532"),  # reads as a table of chip commands
}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _offenders() -> list[str]:
    found: list[str] = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                kind, limit = "class", MAX_CLASS_LINES
                if (rel, node.name) in CLASS_EXEMPT:
                    continue
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                kind, limit = "function", MAX_FUNCTION_LINES
            else:
                continue
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(
                    f"{rel}:{node.lineno}: {kind} {node.name} is {length} lines (> {limit})"
                )
    return found


def test_the_scan_sees_the_packages() -> None:
    names = {p.relative_to(REPO).as_posix() for p in _sources()}
    assert "agent/store.py" in names and "drivers/rfid/pn532_sim.py" in names


def test_no_class_over_400_and_no_function_over_60_lines() -> None:
    offenders = _offenders()
    assert not offenders, (
        f"{len(offenders)} class(es)/function(s) too long; split them "
        f"(classes <= {MAX_CLASS_LINES} lines, functions <= {MAX_FUNCTION_LINES}):\n"
        + "\n".join(offenders)
    )
