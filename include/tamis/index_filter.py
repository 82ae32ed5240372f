"""The filter language of ``tamis query`` and :func:`tamis.lookup.query`: a predicate over an
index's columns, compiled to parameterised DuckDB SQL.

Only this grammar is accepted (keywords in any case)::

    filter     := or
    or         := and ( OR and )*
    and        := not ( AND not )*
    not        := NOT not | predicate
    predicate  := '(' filter ')'
                | operand [ comparison ]
    comparison := ( = | == | != | <> | < | <= | > | >= ) operand
                | [NOT] IN '(' literal ( ',' literal )* ')'
                | [NOT] BETWEEN operand AND operand
                | [NOT] LIKE string | [NOT] ILIKE string
                | IS [NOT] NULL
    operand    := column | literal
    literal    := 'string' | number | -number | TRUE | FALSE | NULL
    column     := name | "quoted name"        (a column of the index)

The SQL is written from the parsed tree, never from the text: every column is a quoted
identifier checked against the index's columns, every literal a bound parameter. So no
function (``read_csv``...), subquery, statement (``COPY``, ``;``) or comment can reach
DuckDB, whatever the text holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_FILTER_CHARS = 10_000
MAX_DEPTH = 64

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*')
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<quoted>"(?:[^"]|"")+")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op><=|>=|<>|!=|==|=|<|>|\(|\)|,|-)
    )""",
    re.VERBOSE,
)
_COMPARISONS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_KEYWORDS = {"AND", "OR", "NOT", "IN", "BETWEEN", "LIKE", "ILIKE", "IS", "NULL", "TRUE", "FALSE"}


class FilterError(ValueError):
    pass


@dataclass
class _Token:
    kind: str  # string, number, quoted, name, op, end
    text: str
    at: int


@dataclass
class CompiledFilter:
    """A predicate in DuckDB SQL and the values of its ``$name`` parameters."""

    sql: str
    params: dict[str, Any] = field(default_factory=dict)


def compile_filter(text: str, columns: list[str], param_prefix: str = "v") -> CompiledFilter:
    """Parse ``text`` (the grammar above) over ``columns`` into SQL with bound parameters."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"--where is longer than {MAX_FILTER_CHARS} characters")
    return _Parser(text, columns, param_prefix).parse()


def _tokens(text: str) -> list[_Token]:
    tokens, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            tokens.append(_Token("end", "", at))
            return tokens
        match = _TOKEN.match(text, at)
        if not match or match.end() == at:
            raise FilterError(f"--where: unexpected {text[at]!r} at character {at + 1} of {_shown(text)}")
        kind = match.lastgroup
        assert kind is not None, "every alternative of _TOKEN is a named group"
        tokens.append(_Token(kind, match[kind], match.start(kind)))
        at = match.end()


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:200] + "...")


class _Parser:
    def __init__(self, text: str, columns: list[str], param_prefix: str):
        self.text = text
        self.columns = columns
        self.prefix = param_prefix
        self.tokens = _tokens(text)
        self.pos = 0
        self.params: dict[str, Any] = {}
        self.depth = 0

    # -- tokens
    @property
    def token(self) -> _Token:
        return self.tokens[self.pos]

    def _keyword(self, *words: str) -> bool:
        return self.token.kind == "name" and self.token.text.upper() in words

    def _take_keyword(self, *words: str) -> bool:
        if self._keyword(*words):
            self.pos += 1
            return True
        return False

    def _take_op(self, op: str) -> bool:
        if self.token.kind == "op" and self.token.text == op:
            self.pos += 1
            return True
        return False

    def _expect_op(self, op: str) -> None:
        if not self._take_op(op):
            self._fail(f"expected {op!r}")

    def _fail(self, what: str):
        found = repr(self.token.text) if self.token.kind != "end" else "the end"
        raise FilterError(f"--where: {what}, found {found} at character {self.token.at + 1} of {_shown(self.text)}")

    # -- grammar
    def parse(self) -> CompiledFilter:
        sql = self._or()
        if self.token.kind != "end":
            self._fail("expected AND, OR or the end")
        return CompiledFilter(sql, self.params)

    def _or(self) -> str:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self._fail(f"nested deeper than {MAX_DEPTH}")
        parts = [self._and()]
        while self._take_keyword("OR"):
            parts.append(self._and())
        self.depth -= 1
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def _and(self) -> str:
        parts = [self._not()]
        while self._take_keyword("AND"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def _not(self) -> str:
        if self._take_keyword("NOT"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self._fail(f"nested deeper than {MAX_DEPTH}")
            inner = self._not()
            self.depth -= 1
            return f"(NOT {inner})"
        return self._predicate()

    def _predicate(self) -> str:
        if self._take_op("("):
            inner = self._or()
            self._expect_op(")")
            return inner
        left = self._operand()
        if self.token.kind == "op" and self.token.text in _COMPARISONS:
            op = _COMPARISONS[self.token.text]
            self.pos += 1
            return f"({left} {op} {self._operand()})"
        if self._take_keyword("IS"):
            negated = self._take_keyword("NOT")
            if not self._take_keyword("NULL"):
                self._fail("expected NULL after IS")
            return f"({left} IS {'NOT ' if negated else ''}NULL)"
        negated = self._take_keyword("NOT")
        if self._take_keyword("IN"):
            self._expect_op("(")
            values = [self._literal()]
            while self._take_op(","):
                values.append(self._literal())
            self._expect_op(")")
            return f"({left} {'NOT ' if negated else ''}IN ({', '.join(values)}))"
        if self._take_keyword("BETWEEN"):
            low = self._operand()
            if not self._take_keyword("AND"):
                self._fail("expected AND in BETWEEN")
            return f"({left} {'NOT ' if negated else ''}BETWEEN {low} AND {self._operand()})"
        for word in ("LIKE", "ILIKE"):
            if self._take_keyword(word):
                if self.token.kind != "string":
                    self._fail(f"expected a quoted pattern after {word}")
                return f"({left} {'NOT ' if negated else ''}{word} {self._literal()})"
        if negated:
            self._fail("expected IN, BETWEEN, LIKE or ILIKE after NOT")
        return left  # a boolean column or literal on its own

    def _operand(self) -> str:
        token = self.token
        if token.kind == "quoted":
            self.pos += 1
            return self._column(token.text[1:-1].replace('""', '"'), token)
        if token.kind == "name" and token.text.upper() not in _KEYWORDS:
            self.pos += 1
            if self.token.kind == "op" and self.token.text == "(":
                raise FilterError(
                    f"--where: {token.text}(...): functions are not allowed, only columns, "
                    f"literals, comparisons, IN, BETWEEN, LIKE, IS NULL, AND, OR, NOT"
                )
            return self._column(token.text, token)
        return self._literal()

    def _column(self, name: str, token: _Token) -> str:
        if name not in self.columns:
            raise FilterError(
                f"--where: unknown column {name!r} at character {token.at + 1}; the index has {', '.join(self.columns)}"
            )
        return '"' + name.replace('"', '""') + '"'

    def _literal(self) -> str:
        token = self.token
        if token.kind == "string":
            value: Any = token.text[1:-1].replace("''", "'")
        elif token.kind == "number" or (
            token.kind == "op" and token.text == "-" and self.tokens[self.pos + 1].kind == "number"
        ):
            if token.kind == "op":
                self.pos += 1
            text = ("-" if token.kind == "op" else "") + self.token.text
            value = float(text) if any(c in text for c in ".eE") else int(text)
        elif self._keyword("TRUE", "FALSE"):
            value = token.text.upper() == "TRUE"
        elif self._keyword("NULL"):
            self.pos += 1
            return "NULL"
        else:
            self._fail("expected a column or a value")
        self.pos += 1
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f"${name}"
