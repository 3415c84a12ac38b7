"""Code a newcomer can change: no function longer than a screen (60 lines) and no module longer
than ~400 lines in the product's packages. A split where a part has a name of its own beats a
long function; the allow-list is for the rare case where a split would hurt, each with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("crossrec", "towers", "ranking", "serving", "bench")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# "module:function" -> why it stays long
ALLOWED: dict[str, str] = {}


def long_functions(source: str, module: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``module:name (n lines)`` for every function or method (nested ones too) over ``limit``
    lines, decorators excluded, docstring included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{module}:{node.name} ({lines} lines)")
    return found


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, str(path.relative_to(ROOT))


def test_no_function_is_longer_than_a_screen():
    too_long = [f for path, name in modules() for f in long_functions(path.read_text(), name)
                if f.split(" (")[0] not in ALLOWED]
    assert too_long == []


def test_no_module_is_longer_than_400_lines():
    too_long = {name: n for path, name in modules() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}


def test_the_check_sees_a_long_function():
    body = "\n".join(f"        x{i} = {i}" for i in range(61))
    source = f"def short():\n    return 1\n\n\nclass A:\n    def long(self):\n{body}\n"
    assert long_functions(source, "m.py") == ["m.py:long (62 lines)"]
