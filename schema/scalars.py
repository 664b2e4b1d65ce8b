"""The contract's scalars: Decimal as an exact JSON string, DateTime as ISO-8601 UTC with 'Z'."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import strawberry
from graphql import GraphQLError

MAX_DECIMAL_TEXT = 64


def serialize_decimal(value: Decimal) -> str:
    return format(value, "f")


def parse_decimal(value: Any) -> Decimal:
    """Strings and integers only: a JSON float has already lost the exact value."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise GraphQLError(
            'Decimal must be a string such as "187.25" (or an integer), not a float',
            extensions={"code": "BAD_USER_INPUT"},
        )
    text = str(value).strip()
    if len(text) > MAX_DECIMAL_TEXT:
        raise GraphQLError("Decimal is too long", extensions={"code": "BAD_USER_INPUT"})
    try:
        parsed = Decimal(text)
    except InvalidOperation as exc:
        raise GraphQLError(
            f"{text!r} is not a decimal number", extensions={"code": "BAD_USER_INPUT"}
        ) from exc
    if not parsed.is_finite():
        raise GraphQLError("Decimal must be finite", extensions={"code": "BAD_USER_INPUT"})
    return parsed


def serialize_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise GraphQLError(
            "DateTime must be an ISO-8601 string", extensions={"code": "BAD_USER_INPUT"}
        )
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GraphQLError(
            f"{value!r} is not an ISO-8601 date and time", extensions={"code": "BAD_USER_INPUT"}
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


DecimalScalar = strawberry.scalar(
    name="Decimal",
    description='Exact decimal, serialized as a JSON string: "187.25", "0.125". Never a float.',
    serialize=serialize_decimal,
    parse_value=parse_decimal,
)

DateTimeScalar = strawberry.scalar(
    name="DateTime",
    description='A UTC instant in ISO-8601, e.g. "2026-11-24T14:30:00.123Z".',
    serialize=serialize_datetime,
    parse_value=parse_datetime,
)

SCALAR_OVERRIDES: dict[object, Any] = {Decimal: DecimalScalar, datetime: DateTimeScalar}
