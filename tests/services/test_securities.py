"""The symbol directory loader: strict about the NASDAQ Trader format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from services.infra.container import Services
from services.infra.settings import Settings
from services.market_data.securities import (
    NASDAQ_HEADER,
    OTHER_HEADER,
    DirectoryFormatError,
    parse_directory,
)

# Cut from NASDAQ Trader's directories (the full ones are in ../shared/data): their headers and
# footers, the rows named in the tests, test issues, and every 150th row.
DATA = Path(__file__).resolve().parents[1] / "fixtures" / "nasdaq"
FOOTER = "File Creation Time: 0815201621:32|||||||"


def nasdaq(*rows: str, footer: str = FOOTER) -> str:
    return "\n".join([NASDAQ_HEADER, *rows, footer]) + "\n"


def test_the_real_directories_parse_and_skip_test_issues() -> None:
    nasdaq_listed = parse_directory((DATA / "nasdaqlisted.txt").read_text())
    other_listed = parse_directory((DATA / "otherlisted.txt").read_text())
    assert len(nasdaq_listed) == 27 - 3  # the rows less the test issues
    assert len(other_listed) == 41 - 1
    symbols = {s.symbol for s in nasdaq_listed + other_listed}
    assert {"AAPL", "MSFT", "FB", "SPY", "BRK.B"} <= symbols
    assert "ZAZZT" not in symbols  # a test issue
    spy = next(s for s in other_listed if s.symbol == "SPY")
    assert spy.is_etf and spy.exchange == "NYSE ARCA"
    aapl = next(s for s in nasdaq_listed if s.symbol == "AAPL")
    assert aapl.exchange == "NASDAQ" and aapl.name.startswith("Apple Inc.")


def test_other_listed_rows() -> None:
    content = "\n".join(
        [
            OTHER_HEADER,
            "AA$B|Alcoa Preferred|N|AApB|N|100|N|AA-B",
            "TST|Test issue|N|TST|N|100|Y|TST",
            FOOTER,
        ]
    )
    (security,) = parse_directory(content)
    assert (security.symbol, security.exchange, security.is_etf) == ("AA$B", "NYSE", False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("Symbol|Name\nAAPL|Apple\n" + FOOTER, "header"),
        (nasdaq("AAPL|Apple Inc.|Q|N|N|100|N|N", footer="ZYNE|Zynerba|G|N|N|100|N|N"), "footer"),
        (nasdaq("AAPL|Apple Inc.|Q|N|N|100|N"), "fields"),
        (nasdaq("AAPL|Apple Inc.|Q|maybe|N|100|N|N"), "Test Issue"),
        (nasdaq("AAPL|Apple Inc.|Q|N|N|lots|N|N"), "round lot"),
        (nasdaq("aa pl|Apple Inc.|Q|N|N|100|N|N"), "not a symbol"),
        ("\n".join([OTHER_HEADER, "X|X Corp|Q|X|N|100|N|X", FOOTER]), "exchange"),
    ],
)
def test_malformed_directories_are_refused_with_the_line(content: str, message: str) -> None:
    with pytest.raises(DirectoryFormatError, match=message):
        parse_directory(content, source="f.txt")


def test_the_cli_loads_the_real_files(settings: Settings) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "securities",
            "load",
            str(DATA / "nasdaqlisted.txt"),
            str(DATA / "otherlisted.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout


def test_the_cli_refuses_a_truncated_file(settings: Settings, tmp_path: Path) -> None:
    truncated = tmp_path / "nasdaqlisted.txt"
    truncated.write_text(
        "\n".join((DATA / "nasdaqlisted.txt").read_text().splitlines()[:10])
    )  # no footer
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "securities", "load", str(truncated)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "truncated" in result.stderr


async def test_loading_twice_updates_in_place(services: Services) -> None:
    from services.market_data.securities import Security

    await services.securities.load([Security("UPD", "Old Name", "NYSE")])
    await services.securities.load([Security("UPD", "New Name", "NASDAQ", is_etf=True)])
    (found,) = await services.securities.by_symbols(["upd"])
    assert found is not None and (found.name, found.exchange, found.is_etf) == (
        "New Name",
        "NASDAQ",
        True,
    )
    async with services.engine.connect() as conn:
        count = (
            await conn.execute(text("SELECT count(*) FROM securities WHERE symbol = 'UPD'"))
        ).scalar_one()
    assert count == 1
