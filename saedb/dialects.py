"""sqlglot dialects that understand pgvector's distance operators.

Stock sqlglot reads ``<=>`` as MySQL's null-safe equality (it becomes IS NOT DISTINCT FROM)
and cannot parse ``<#>``. These dialects parse the pgvector operators into their own
expression nodes, at Postgres' precedence for user-defined operators (looser than + and -,
tighter than comparisons), and render them per backend:

    pgvector      saedb-postgres     saedb-duckdb
    a <=> b       a <=> b            array_cosine_distance(a, b)
    a <#> b       a <#> b            array_negative_inner_product(a, b)
    a <-> b       a <-> b            array_distance(a, b)

``CAST(x AS vector)`` becomes ``CAST(x AS FLOAT[dim])`` in DuckDB when the dimension is known.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.dialects.postgres import Postgres
from sqlglot.tokens import TokenType

from saedb.errors import InvalidInputError


class CosineDistance(exp.Expression, exp.Binary):
    """pgvector ``<=>``."""


class NegativeInnerProduct(exp.Expression, exp.Binary):
    """pgvector ``<#>``."""


# sqlglot's TokenType is a closed enum: ``<#>`` borrows one that neither dialect uses.
NEGATIVE_INNER_PRODUCT_TOKEN = TokenType.DOTCARET

VECTOR_OPERATORS = {
    TokenType.NULLSAFE_EQ: CosineDistance,
    NEGATIVE_INNER_PRODUCT_TOKEN: NegativeInnerProduct,
    TokenType.LR_ARROW: exp.Distance,
}


class SaedbPostgres(Postgres):
    class Tokenizer(Postgres.Tokenizer):
        KEYWORDS = {**Postgres.Tokenizer.KEYWORDS, "<#>": NEGATIVE_INNER_PRODUCT_TOKEN}

    class Parser(Postgres.Parser):
        EQUALITY = {k: v for k, v in Postgres.Parser.EQUALITY.items() if k != TokenType.NULLSAFE_EQ}
        FACTOR = {k: v for k, v in Postgres.Parser.FACTOR.items() if k != TokenType.LR_ARROW}
        BITWISE = {**Postgres.Parser.BITWISE, **VECTOR_OPERATORS}

    class Generator(Postgres.Generator):
        TRANSFORMS = {
            **Postgres.Generator.TRANSFORMS,
            CosineDistance: lambda self, e: self.binary(e, "<=>"),
            NegativeInnerProduct: lambda self, e: self.binary(e, "<#>"),
            exp.Distance: lambda self, e: self.binary(e, "<->"),
        }


class SaedbDuckDB(DuckDB):
    class Parser(DuckDB.Parser):
        FUNCTIONS = {
            **DuckDB.Parser.FUNCTIONS,
            "ARRAY_COSINE_DISTANCE": lambda args: CosineDistance(this=args[0], expression=args[1]),
            "ARRAY_NEGATIVE_INNER_PRODUCT": lambda args: NegativeInnerProduct(this=args[0], expression=args[1]),
            "ARRAY_DISTANCE": lambda args: exp.Distance(this=args[0], expression=args[1]),
        }

    class Generator(DuckDB.Generator):
        TRANSFORMS = {
            **DuckDB.Generator.TRANSFORMS,
            CosineDistance: lambda self, e: self.func("array_cosine_distance", e.this, e.expression),
            NegativeInnerProduct: lambda self, e: self.func("array_negative_inner_product", e.this, e.expression),
            exp.Distance: lambda self, e: self.func("array_distance", e.this, e.expression),
        }


DIALECTS = {"postgres": SaedbPostgres, "duckdb": SaedbDuckDB}


PARAMETER = re.compile(r"__saedb_param_(\d+)__")


def _parse(sql: str, read: str, to: str, dim: int | None) -> exp.Expression:
    try:
        tree = sqlglot.parse_one(sql, read=DIALECTS[read])
    except sqlglot.errors.ParseError as exc:
        raise InvalidInputError(f"cannot parse SQL: {exc}") from None
    if to == "duckdb" and dim is not None:
        float_array = exp.DataType.build(f"FLOAT[{dim}]", dialect="duckdb")
        tree = tree.transform(lambda n: float_array.copy() if isinstance(n, exp.DataType) and n.is_type("vector") else n)
    return tree


def translate(sql: str, to: str, read: str = "postgres", dim: int | None = None) -> str:
    """Translate one statement between saedb's dialects ('postgres' or 'duckdb')."""
    return _parse(sql, read, to, dim).sql(dialect=DIALECTS[to])


def prepare(sql: str, to: str, params: Sequence[Any] = (), dim: int | None = None) -> tuple[str, list[Any]]:
    """Translate saedb-postgres SQL for a backend, with ``?`` placeholders and the parameters
    in textual order. Accepts positional ``?`` and numbered ``$1`` placeholders (write
    ``$1::vector`` or ``CAST(? AS vector)``: Postgres tokenises ``?::`` as an operator).
    Translations are cached: a search builds the same few statements again and again."""
    text, order = _translated(sql, to, len(params), dim)
    return text, [params[i] for i in order]


@lru_cache(maxsize=256)
def _translated(sql: str, to: str, n_params: int, dim: int | None) -> tuple[str, tuple[int, ...]]:
    tree = _parse(sql, "postgres", to, dim)
    positional = iter(range(n_params))
    markers: list[int] = []

    def mark(node: exp.Expression) -> exp.Expression:
        numbered = isinstance(node, exp.Parameter) and node.name.isdigit()
        if isinstance(node, exp.Placeholder) or numbered:
            index = int(node.name) - 1 if node.name.isdigit() else next(positional, n_params)
            if index >= n_params:
                raise InvalidInputError(f"the query has more placeholders than the {n_params} parameters given")
            markers.append(index)
            return exp.var(f"__saedb_param_{len(markers) - 1}__")
        return node

    text = tree.transform(mark).sql(dialect=DIALECTS[to])
    order = tuple(markers[int(m)] for m in PARAMETER.findall(text))
    return PARAMETER.sub("?", text), order
