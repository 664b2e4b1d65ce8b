"""Plain objects anywhere in an operation are read directly, with exactly graphql-core's result."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import strawberry

from gateway.event_execution import ProjectingExecutionContext
from schema.prefetch import prefetched
from schema.scalars import SCALAR_OVERRIDES
from services.infra.compat import StrawberryGraphQLCoreExecutionContext


@strawberry.enum
class Side(enum.Enum):
    BUY = "BUY"
    SELL = "SELL"


@strawberry.type
class Price:
    last: Decimal
    at: datetime


@strawberry.type
class Holding:
    symbol: str
    quantity: Decimal
    side: Side
    note: str | None
    price: Price | None


@strawberry.type
class Account:
    name: str

    @strawberry.field
    def holdings(self) -> list[Holding]:
        return HOLDINGS

    @strawberry.field
    def gaps(self) -> list[Holding | None]:
        return HOLDINGS


AT = datetime(2026, 12, 3, 15, 30, tzinfo=UTC)
AT_TEXT = "2026-12-03T15:30:00.000Z"
HOLDINGS: list[Holding] = []


def holding(i: int, *, price: bool = True) -> Holding:
    return Holding(
        symbol=f"S{i}",
        quantity=Decimal(f"{i}.500000"),
        side=Side.BUY if i % 2 else Side.SELL,
        note=None if i % 3 else "third",
        price=Price(last=Decimal(f"1{i}.2500"), at=AT) if price else None,
    )


@strawberry.type
class Query:
    @strawberry.field
    def account(self) -> Account:
        return Account(name="main")


fields_executed = 0
values_completed = 0


class CountingMixin:
    def execute_field(self, *args: Any, **kwargs: Any) -> Any:
        global fields_executed
        fields_executed += 1
        return super().execute_field(*args, **kwargs)  # type: ignore[misc]

    def complete_value(self, *args: Any, **kwargs: Any) -> Any:
        global values_completed
        values_completed += 1
        return super().complete_value(*args, **kwargs)  # type: ignore[misc]


class CountingProjecting(CountingMixin, ProjectingExecutionContext):
    pass


class CountingPlain(CountingMixin, StrawberryGraphQLCoreExecutionContext):
    pass


def run(executor: type, query: str) -> tuple[Any, int]:
    global fields_executed
    fields_executed = 0
    schema = strawberry.Schema(
        query=Query, scalar_overrides=SCALAR_OVERRIDES, execution_context_class=executor
    )
    result = schema.execute_sync(query)
    errors = [(e.message, e.path) for e in result.errors or []]
    return (result.data, errors), fields_executed


QUERY = (
    "{ account { name holdings { __typename symbol q: quantity side note price { last at } } } }"
)


def test_plain_objects_are_read_directly_with_the_same_result() -> None:
    HOLDINGS[:] = [holding(i) for i in range(20)] + [holding(20, price=False)]
    projected, projected_fields = run(CountingProjecting, QUERY)
    plain, plain_fields = run(CountingPlain, QUERY)
    assert projected == plain
    assert projected[0]["account"]["holdings"][20]["price"] is None
    assert plain_fields > 100  # every field of every holding
    assert projected_fields == 3  # account, name, holdings: the holdings are read directly


def test_a_list_of_plain_objects_is_read_without_completing_each_item() -> None:
    global values_completed
    completed = {}
    for count in (2, 40):
        HOLDINGS[:] = [holding(i) for i in range(count)]
        values_completed = 0
        projected, _ = run(CountingProjecting, QUERY)
        completed[count] = values_completed
        assert projected == run(CountingPlain, QUERY)[0]
    assert completed[40] == completed[2]


def test_null_items_are_kept_where_allowed_and_reported_where_not() -> None:
    HOLDINGS[:] = [holding(0), None, holding(2)]  # type: ignore[list-item]
    for query in (
        "{ account { gaps { symbol price { last } } } }",
        "{ account { holdings { symbol price { last } } } }",
    ):
        projected, _ = run(CountingProjecting, query)
        plain, _ = run(CountingPlain, query)
        assert projected == plain
    nullable = run(CountingProjecting, "{ account { gaps { symbol } } }")[0]
    assert nullable == ({"account": {"gaps": [{"symbol": "S0"}, None, {"symbol": "S2"}]}}, [])
    refused = run(CountingProjecting, "{ account { holdings { symbol } } }")[0]
    assert refused[0] is None and refused[1][0][1] == ["account", "holdings", 1]


def test_a_null_where_none_is_allowed_is_reported_as_graphql_core_reports_it() -> None:
    broken = holding(1)
    broken.symbol = None  # type: ignore[assignment]
    HOLDINGS[:] = [holding(0), broken]
    projected, _ = run(CountingProjecting, QUERY)
    plain, _ = run(CountingPlain, QUERY)
    assert projected == plain
    assert projected[1] and "Cannot return null" in projected[1][0][0]


def test_selections_it_cannot_read_go_the_ordinary_way() -> None:
    HOLDINGS[:] = [holding(i) for i in range(5)]
    query = "query($n: Boolean!) { account { holdings { symbol note @include(if: $n) } } }"
    schema = strawberry.Schema(
        query=Query, scalar_overrides=SCALAR_OVERRIDES, execution_context_class=CountingProjecting
    )
    global fields_executed
    fields_executed = 0
    result = schema.execute_sync(query, variable_values={"n": False})
    assert result.data == {"account": {"holdings": [{"symbol": f"S{i}"} for i in range(5)]}}
    assert fields_executed > 5  # a directive below: executed field by field


@strawberry.type
class Cash:
    currency: str


@strawberry.type
class Shares:
    symbol: str


@strawberry.type
class Wallet:
    @strawberry.field
    def assets(self) -> list[Cash | Shares]:
        return [Cash(currency="USD"), Shares(symbol="AAPL"), Cash(currency="EUR")]


@strawberry.type
class UnionQuery:
    @strawberry.field
    def wallet(self) -> Wallet:
        return Wallet()


def test_one_selection_over_a_union_is_read_as_each_objects_own_type() -> None:
    query = "{ wallet { assets { __typename } } }"
    results = []
    for executor in (CountingProjecting, CountingPlain):
        schema = strawberry.Schema(query=UnionQuery, execution_context_class=executor)
        result = schema.execute_sync(query)
        assert result.errors is None
        results.append(result.data)
    assert results[0] == results[1]
    assert results[0] == {
        "wallet": {
            "assets": [{"__typename": "Cash"}, {"__typename": "Shares"}, {"__typename": "Cash"}]
        }
    }


def test_a_field_selected_twice_is_merged_as_graphql_core_merges_it() -> None:
    HOLDINGS[:] = [holding(i) for i in range(3)]
    query = "{ account { holdings { symbol price { last } price { at } symbol } } }"
    projected, _ = run(CountingProjecting, query)
    plain, _ = run(CountingPlain, query)
    assert projected == plain
    assert projected[0]["account"]["holdings"][0]["price"] == {"last": "10.2500", "at": AT_TEXT}


def test_a_shared_value_is_read_once_per_selection_and_reused() -> None:
    """A value marked shared is never changed by its owner; changing one here shows that the
    second request reused the first reading, while an unmarked one is read again."""
    from strawberry.extensions import ParserCache

    from resolvers.shared_events import shared_value

    kept, plain = shared_value(holding(1)), holding(2)
    HOLDINGS[:] = [kept, plain]
    schema = strawberry.Schema(
        query=Query,
        scalar_overrides=SCALAR_OVERRIDES,
        execution_context_class=ProjectingExecutionContext,
        extensions=[ParserCache()],
    )
    query = "{ account { holdings { symbol price { last } } } }"
    first = schema.execute_sync(query)
    kept.symbol, plain.symbol = "CHANGED1", "CHANGED2"
    second = schema.execute_sync(query)
    assert first.errors is None and second.errors is None
    assert [h["symbol"] for h in first.data["account"]["holdings"]] == ["S1", "S2"]  # type: ignore[index]
    assert [h["symbol"] for h in second.data["account"]["holdings"]] == ["S1", "CHANGED2"]  # type: ignore[index]
    other = schema.execute_sync("{ account { holdings { symbol } } }")  # another selection
    assert [h["symbol"] for h in other.data["account"]["holdings"]] == ["CHANGED1", "CHANGED2"]  # type: ignore[index]


# -- lists inside objects, and resolver fields whose value was read already --------------------


@strawberry.type
class Fill:
    price: Decimal
    venue: str


@strawberry.type
class Book:
    name: str
    tags: list[str]
    fills: list[Fill]
    resolved = 0

    @strawberry.field(metadata=prefetched("ready_fills"))
    def late_fills(self) -> list[Fill]:
        Book.resolved += 1
        return (
            self.ready_fills
            if self.ready_fills is not None
            else [Fill(price=Decimal("9.5"), venue="X")]
        )

    ready_fills: strawberry.Private[list[Fill] | None] = None


BOOKS: list[Book] = []


@strawberry.type
class BookQuery:
    @strawberry.field
    def books(self) -> list[Book]:
        return BOOKS


BOOK_QUERY = "{ books { name tags fills { price venue } lateFills { price } } }"


def run_books(executor: type) -> tuple[Any, int]:
    global fields_executed
    fields_executed = 0
    schema = strawberry.Schema(
        query=BookQuery, scalar_overrides=SCALAR_OVERRIDES, execution_context_class=executor
    )
    result = schema.execute_sync(BOOK_QUERY)
    return (result.data, [(e.message, e.path) for e in result.errors or []]), fields_executed


def a_book(i: int, *, ready: bool) -> Book:
    fills = [Fill(price=Decimal(f"{i}.25"), venue=f"V{j}") for j in range(3)]
    return Book(
        name=f"b{i}", tags=["a", f"t{i}"], fills=fills, ready_fills=fills if ready else None
    )


def test_lists_inside_objects_and_prefetched_fields_are_read_directly() -> None:
    BOOKS[:] = [a_book(i, ready=True) for i in range(10)]
    Book.resolved = 0
    projected, projected_fields = run_books(CountingProjecting)
    assert Book.resolved == 0 and projected_fields == 1  # books; the rest read directly
    plain, _ = run_books(CountingPlain)
    assert projected == plain


def test_a_prefetched_field_not_read_yet_is_resolved_the_ordinary_way() -> None:
    BOOKS[:] = [a_book(1, ready=True), a_book(2, ready=False)]
    Book.resolved = 0
    projected, _ = run_books(CountingProjecting)
    assert Book.resolved >= 1  # the second book's fills came from its resolver
    assert projected[0]["books"][1]["lateFills"] == [{"price": "9.5"}]
    assert projected == run_books(CountingPlain)[0]


def test_every_fallback_is_counted_by_where_and_why() -> None:
    from gateway.event_execution import FALLBACKS

    counted = FALLBACKS.labels("list", "expected")
    before = counted._value.get()
    broken = holding(1)
    broken.symbol = None  # type: ignore[assignment]
    HOLDINGS[:] = [holding(0), broken]
    run(CountingProjecting, QUERY)
    assert counted._value.get() == before + 1


def test_the_projection_can_be_switched_off() -> None:
    from gateway.graphql_schema import build_schema
    from services.infra.settings import Settings

    assert build_schema(Settings(projection=True)).execution_context_class is (
        ProjectingExecutionContext
    )
    off = build_schema(Settings(projection=False)).execution_context_class
    assert off is None or not issubclass(off, ProjectingExecutionContext)
