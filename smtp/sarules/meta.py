"""Meta rules: SpamAssassin's boolean and arithmetic expressions over other rules' hits, compiled to Python.

An expression is parsed with Perl's precedence (``!`` and unary minus bind tightest, then ``* /``, ``+ -``,
comparisons, ``&&``, ``||``) and written back as a Python expression over a dict of hit counts, so
``!A + B > 1`` keeps its Perl meaning. Only rule names, numbers and operators pass; anything else raises
:class:`MetaError`, so nothing from a rule file is ever executed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\d+(?:\.\d+)?)|(&&|\|\||>=|<=|==|!=|[-+*/()<>!]))")
#: Perl's binary operators from the loosest to the tightest level, each with the Python it is written back as.
_BINARY: tuple[dict[str, str], ...] = (
    {"||": "({} or {})"},
    {"&&": "({} and {})"},
    {op: f"({{}} {op} {{}})" for op in (">", "<", ">=", "<=", "==", "!=")},
    {"+": "({} + {})", "-": "({} - {})"},
    {"*": "({} * {})", "/": "_div({}, {})"},
)


class MetaError(ValueError):
    """A meta expression that cannot be read."""


@dataclass(frozen=True)
class MetaRule:
    name: str
    #: Rule names the expression reads.
    deps: tuple[str, ...]
    #: Hit counts by rule name -> the expression's value (true when it hits).
    evaluate: Callable[[Mapping[str, int]], float]
    python: str


def _tokens(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise MetaError(f"cannot read {expr[pos:pos + 20]!r}")
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0
        self.deps: list[str] = []

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        if self.i >= len(self.t):
            raise MetaError("expression ends early")
        self.i += 1
        return self.t[self.i - 1]

    def parse(self) -> str:
        out = self.binary()
        if self.peek() is not None:
            raise MetaError(f"unexpected {self.peek()!r}")
        return out

    def binary(self, level: int = 0) -> str:
        """The operands of ``_BINARY[level]``'s operators, left to right, each of the tighter levels."""
        if level == len(_BINARY):
            return self.unary()
        python = _BINARY[level]
        out = self.binary(level + 1)
        while (op := self.peek()) is not None and op in python:
            self.take()
            out = python[op].format(out, self.binary(level + 1))
        return out

    def unary(self) -> str:
        if self.peek() == "!":
            self.take()
            return f"(not {self.unary()})"
        if self.peek() == "-":
            self.take()
            return f"(-{self.unary()})"
        return self.primary()

    def primary(self) -> str:
        tok = self.take()
        if tok == "(":
            out = self.binary()
            if self.take() != ")":
                raise MetaError("missing )")
            return out
        if tok[0].isdigit():
            return tok
        if tok[0].isalpha() or tok[0] == "_":
            self.deps.append(tok)
            return f"_h.get({tok!r}, 0)"
        raise MetaError(f"unexpected {tok!r}")


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def compile_meta(name: str, expr: str) -> MetaRule:
    """A meta rule's expression compiled; raises :class:`MetaError`."""
    parser = _Parser(_tokens(expr))
    python = parser.parse()
    code = compile(f"lambda _h: {python}", f"<meta {name}>", "eval")
    evaluate = eval(code, {"__builtins__": {}, "_div": _div})  # noqa: S307 (names, numbers, operators only)
    return MetaRule(name, tuple(dict.fromkeys(parser.deps)), evaluate, python)


def compile_metas(metas: Sequence[MetaRule]) -> Callable[[dict[str, int]], None]:
    """One function that evaluates ``metas`` in order over a dict of hit counts, recording each that hits (1) in it
    as it goes, as a loop calling each rule's :attr:`~MetaRule.evaluate` would: an expression that raises an
    arithmetic or type error does not hit. One function instead of one call per rule: the stock rules have some 850
    meta rules, and the calls cost more than the expressions."""
    lines = ["def _metas(_h):", "    _g = _h.get"]
    for meta in metas:
        # meta.python reads counts only as _h.get('NAME', 0) (see _Parser.primary); rule names never hold "_h.get(".
        expression = meta.python.replace("_h.get(", "_g(")
        lines += ["    try:", f"        if {expression}:", f"            _h[{meta.name!r}] = 1",
                  "    except (ArithmeticError, TypeError):", "        pass"]
    if not metas:
        lines.append("    return None")
    namespace: dict[str, Any] = {"__builtins__": {}, "_div": _div, "ArithmeticError": ArithmeticError,
                                 "TypeError": TypeError}
    exec(compile("\n".join(lines), "<meta rules>", "exec"), namespace)  # noqa: S102 (names, numbers, operators only)
    run: Callable[[dict[str, int]], None] = namespace["_metas"]
    return run
