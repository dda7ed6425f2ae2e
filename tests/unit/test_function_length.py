"""No function in src/ is over 150 lines (issue 14: the trainer reads as a recipe)."""

import ast
from pathlib import Path

import qscale

MAX_LINES = 150


def test_no_function_over_150_lines():
    root = Path(qscale.__file__).parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
