"""One fixed scale per kind of number, so a client sees `190.1400`, never `190.14` in one field and
`190.140` in another (issue 14): money 2 places, prices and per-share values 4, quantities 6,
percentages 2 (on a 0-100 scale).

A Decimal field of an output type is declared with `scaled(KIND, ...)`, which says its scale in
the field's description; the type derives from `Scaled`, whose `__post_init__` quantizes each
such field as the object is made (half away from zero, as PostgreSQL's `round` does, so a page
compiled to SQL writes the same digits: `resolvers/order_page.py`). Every Decimal output field of
the served schema has a scale: `tests/api/test_decimal_scales.py` checks the schema and the
values served.
"""

from __future__ import annotations

import dataclasses
from decimal import ROUND_HALF_UP, Context, Decimal
from enum import Enum
from typing import Any, overload

import strawberry

SCALE = "tradeql_scale"
# Wide enough for any stored or computed value: quantize must never run out of digits.
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP)


class Kind(Enum):
    MONEY = ("money", 2)
    PRICE = ("price", 4)
    QUANTITY = ("quantity", 6)
    PERCENT = ("percent", 2)

    def __init__(self, label: str, places: int) -> None:
        self.label = label
        self.places = places
        self.exponent = Decimal(1).scaleb(-places)

    @property
    def note(self) -> str:
        scale = "0-100, " if self is Kind.PERCENT else ""
        return f"{self.label}: {scale}{self.places} decimal places"


MONEY, PRICE, QUANTITY, PERCENT = Kind.MONEY, Kind.PRICE, Kind.QUANTITY, Kind.PERCENT


def described(kind: Kind, description: str | None = None) -> str:
    """A Decimal field's description, with its scale."""
    return f"{description} ({kind.note})" if description else kind.note.capitalize()


def scaled(kind: Kind, description: str | None = None, **field_args: Any) -> Any:
    """A Decimal field always written with `kind`'s places; its description says so."""
    return strawberry.field(
        description=described(kind, description), metadata={SCALE: kind}, **field_args
    )


@overload
def to_scale(value: Decimal, kind: Kind) -> Decimal: ...
@overload
def to_scale(value: None, kind: Kind) -> None: ...
@overload
def to_scale(value: Decimal | None, kind: Kind) -> Decimal | None: ...
def to_scale(value: Decimal | None, kind: Kind) -> Decimal | None:
    """For a resolver field's value (declared with `described`): `Scaled` sees only fields."""
    return None if value is None else value.quantize(kind.exponent, context=_CONTEXT)


_FIELDS: dict[type, tuple[tuple[str, Decimal], ...]] = {}


def _scaled_fields(cls: type) -> tuple[tuple[str, Decimal], ...]:
    known = _FIELDS.get(cls)
    if known is None:
        known = _FIELDS[cls] = tuple(
            (f.name, f.metadata[SCALE].exponent)
            for f in dataclasses.fields(cls)
            if f.metadata and SCALE in f.metadata
        )
    return known


class Scaled:
    """Quantizes the type's `scaled` fields when an object is made."""

    def __post_init__(self) -> None:
        for name, exponent in _scaled_fields(type(self)):
            value = getattr(self, name)
            if isinstance(value, Decimal):
                setattr(self, name, value.quantize(exponent, context=_CONTEXT))
