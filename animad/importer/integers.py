"""Integer arithmetic as shells do it ($(( )) in sh, set /a in cmd): + - * / % ** and parentheses on
whole numbers, with C's truncating division. Nothing else is evaluated (the expression is parsed,
never run)."""

from __future__ import annotations

import ast


def evaluate(expression: str) -> int:
    """The value of an integer expression; ValueError (or SyntaxError, ZeroDivisionError) otherwise."""
    return _integer(ast.parse(expression.strip(), mode="eval").body)


def _integer(node) -> int:
    """A small integer expression (+ - * / % ** and parentheses), with C's truncating division."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _integer(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _integer(node.left), _integer(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, (ast.Div, ast.FloorDiv)):
            quotient = abs(left) // abs(right)
            return quotient if (left >= 0) == (right >= 0) else -quotient
        if isinstance(node.op, ast.Mod):
            return left - right * (abs(left) // abs(right) * (1 if (left >= 0) == (right >= 0) else -1))
        if isinstance(node.op, ast.Pow) and 0 <= right <= 64:
            return left ** right
    raise ValueError("not an integer expression")
