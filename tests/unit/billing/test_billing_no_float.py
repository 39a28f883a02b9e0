"""No float anywhere in billing: money is Decimal end to end."""

from __future__ import annotations

import ast
from pathlib import Path

import billing

PACKAGE = Path(billing.__file__).parent


def float_uses(source: str) -> list[str]:
    """Return where a source uses a float literal or the name ``float``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, float | complex):
            found.append(f"line {node.lineno}: float literal {node.value!r}")
        elif isinstance(node, ast.Name) and node.id == "float":
            found.append(f"line {node.lineno}: name 'float'")
        elif isinstance(node, ast.Attribute) and node.attr == "float":
            found.append(f"line {node.lineno}: attribute '.float'")
        elif isinstance(node, ast.alias) and node.name == "float":
            found.append("import of 'float'")
    return found


def test_the_scanner_catches_float_literals_calls_and_annotations() -> None:
    """The scan itself fails on each way a float can sneak in."""
    assert len(float_uses("x = 0.1\ny = float('1')\ndef f(a: float) -> None: ...\n")) == 3
    assert float_uses("from decimal import Decimal\nx = Decimal('0.1') * 3\n") == []


def test_no_module_in_billing_uses_float() -> None:
    """Every module of the billing package is free of float literals and the float type."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 10
    offenders = {
        str(path.relative_to(PACKAGE)): uses
        for path in modules
        if (uses := float_uses(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
