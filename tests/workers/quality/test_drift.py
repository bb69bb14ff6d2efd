"""Schema drift detection on payloads alone: what is found, what confidence, what is done."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from tests.support.upstream_data import market_coins, tickers
from workers.quality.drift import DriftDetector, DriftGuard, DriftRules, name_similarity
from workers.sources.base import Batch, DriftFinding, PriceRecord, RecordError, SourceItem
from workers.sources.coingecko import MARKET_FIELDS, parse_market_item
from workers.sources.coinpaprika import TICKER_FIELDS, parse_ticker
from workers.sources.csv.layout import layout_for_headers

RULES = DriftRules(automap_at=0.8, quarantine_at=0.5)


def items(payloads: list[dict[str, Any]]) -> list[SourceItem]:
    return [SourceItem(payload, f"GET /test:{n}") for n, payload in enumerate(payloads)]


def renamed_coins(old: str, new: str, count: int = 3) -> list[dict[str, Any]]:
    coins = market_coins(count)
    for coin in coins:
        coin[new] = coin.pop(old)
    return coins


def parse_coin(item: SourceItem) -> PriceRecord:
    return parse_market_item(item.payload)


def by_kind(findings: list[DriftFinding]) -> dict[str, list[DriftFinding]]:
    grouped: dict[str, list[DriftFinding]] = {}
    for finding in findings:
        grouped.setdefault(finding.kind, []).append(finding)
    return grouped


@pytest.mark.parametrize(
    ("found", "declared", "low", "high"),
    [
        ("currentPrice", "current_price", 1.0, 1.0),
        ("price_current", "current_price", 1.0, 1.0),
        ("CURRENT-PRICE", "current_price", 1.0, 1.0),
        ("cur_price", "current_price", 0.8, 0.9),
        ("price", "current_price", 0.5, 0.8),
        ("zq", "current_price", 0.0, 0.2),
    ],
)
def test_names_are_compared_whatever_their_case_style_or_word_order(
    found: str, declared: str, low: float, high: float
) -> None:
    assert low <= name_similarity(found, declared) <= high


@pytest.mark.parametrize(
    ("payloads", "fields"),
    [(market_coins(5), MARKET_FIELDS), (tickers(5), TICKER_FIELDS)],
    ids=["coingecko", "coinpaprika"],
)
def test_the_documented_payloads_show_no_drift(payloads: list[dict[str, Any]], fields: Any) -> None:
    findings, plan = DriftDetector(fields, RULES).inspect(items(payloads))

    assert findings == []
    assert plan.renames == ()
    assert plan.holds == ()


def test_a_confident_rename_is_read_under_the_declared_name() -> None:
    detector = DriftDetector(MARKET_FIELDS, RULES)
    coins = renamed_coins("current_price", "currentPrice")
    batch = items(coins)

    findings, plan = detector.inspect(batch)

    assert findings == [
        DriftFinding(
            "renamed",
            "currentPrice",
            "auto_mapped",
            "current_price",
            1.0,
            {
                "items": 3,
                "of": 3,
                "origin": "GET /test:0",
                "automap_at": 0.8,
                "quarantine_at": 0.5,
            },
        )
    ]
    parse = plan.guard(parse_coin)
    records = [parse(item) for item in batch]
    assert [r.price_usd for r in records] == [
        Decimal("63000.5"),
        Decimal("3100.25"),
        Decimal("33.33333333"),
    ]
    assert "currentPrice" in coins[0]
    assert "current_price" not in coins[0]


def test_a_doubtful_rename_holds_back_the_items_that_have_it() -> None:
    findings, plan = DriftDetector(MARKET_FIELDS, RULES).inspect(
        items(renamed_coins("current_price", "price"))
    )

    (finding,) = findings
    assert (finding.kind, finding.field, finding.matched_field, finding.action) == (
        "renamed",
        "price",
        "current_price",
        "quarantined",
    )
    assert finding.confidence is not None
    assert 0.5 <= finding.confidence < 0.8
    with pytest.raises(RecordError, match=r"^current_price: missing; schema drift: 'price'"):
        plan.guard(parse_coin)(items(renamed_coins("current_price", "price"))[0])


def test_an_unrecognisable_rename_is_missing_and_new_and_its_items_say_why() -> None:
    findings, plan = DriftDetector(MARKET_FIELDS, RULES).inspect(
        items(renamed_coins("current_price", "zq"))
    )

    kinds = by_kind(findings)
    assert [(f.field, f.action) for f in kinds["missing"]] == [("current_price", "quarantined")]
    assert [f.field for f in kinds["new"]] == ["zq"]
    with pytest.raises(RecordError) as raised:
        plan.guard(parse_coin)(items(renamed_coins("current_price", "zq"))[0])
    assert str(raised.value).startswith("current_price: missing; schema drift: new field(s) 'zq'")


def test_a_weak_match_is_reported_as_ignored_with_its_confidence() -> None:
    findings, _ = DriftDetector(MARKET_FIELDS, RULES).inspect(
        items(renamed_coins("current_price", "usd_quote"))
    )

    (ignored,) = [f for f in findings if f.action == "ignored"]
    assert (ignored.kind, ignored.field, ignored.matched_field) == (
        "new",
        "usd_quote",
        "current_price",
    )
    assert ignored.confidence is not None
    assert 0 < ignored.confidence < 0.5


def test_thresholds_decide_the_action() -> None:
    payloads = renamed_coins("current_price", "price")
    lenient = DriftDetector(MARKET_FIELDS, DriftRules(automap_at=0.5, quarantine_at=0.3))
    strict = DriftDetector(MARKET_FIELDS, DriftRules(automap_at=0.9, quarantine_at=0.6))

    assert [f.action for f in lenient.inspect(items(payloads))[0]] == ["auto_mapped"]
    assert {f.action for f in strict.inspect(items(payloads))[0]} == {"quarantined", "ignored"}


def test_a_new_field_of_another_kind_is_no_rename() -> None:
    coins = renamed_coins("current_price", "currentPrice")
    for coin in coins:
        coin["currentPrice"] = {"usd": coin["currentPrice"]}  # an object, not a number

    findings, plan = DriftDetector(MARKET_FIELDS, RULES).inspect(items(coins))

    assert plan.renames == ()
    assert {(f.kind, f.field) for f in findings} >= {("missing", "current_price")}


def test_a_nested_rename_is_found_within_its_object() -> None:
    payloads = tickers(3)
    for ticker in payloads:
        ticker["quotes"]["usd"] = ticker["quotes"].pop("USD")
    batch = items(payloads)

    findings, plan = DriftDetector(TICKER_FIELDS, RULES).inspect(batch)

    assert [(f.kind, f.field, f.matched_field, f.action) for f in findings] == [
        ("renamed", "quotes.usd", "quotes.USD", "auto_mapped")
    ]
    record = plan.guard(lambda item: parse_ticker(item.payload))(batch[0])
    assert record.price_usd == Decimal("63010.1")


def test_new_missing_and_retyped_fields_are_recorded_without_holding_rows() -> None:
    coins = market_coins(3)
    for coin in coins:
        del coin["atl_date"]
        coin["sparkline_in_7d"] = {"price": [1.0, 2.0]}
        coin["ath"] = "unknown"

    findings, plan = DriftDetector(MARKET_FIELDS, RULES).inspect(items(coins))

    assert {(f.kind, f.field, f.action) for f in findings} == {
        ("missing", "atl_date", "recorded"),
        ("new", "sparkline_in_7d", "recorded"),
        ("retyped", "ath", "recorded"),
    }
    assert plan.renames == ()
    assert plan.holds == ()
    retyped = next(f for f in findings if f.kind == "retyped")
    assert retyped.detail["expected"] == "number"
    assert retyped.detail["seen"] == {"text": 3}


def test_numbers_as_strings_and_blanks_are_not_retyped() -> None:
    payloads = tickers(3)
    payloads[0]["quotes"]["USD"]["price"] = "63010.1"
    payloads[1]["quotes"]["USD"]["market_cap"] = ""
    payloads[2]["max_supply"] = None

    findings, _ = DriftDetector(TICKER_FIELDS, RULES).inspect(items(payloads))

    assert findings == []


def test_a_run_records_each_finding_once() -> None:
    guard = DriftGuard(MARKET_FIELDS, RULES)
    first = Batch(items=items(renamed_coins("current_price", "currentPrice")), checkpoint={})
    second = copy.deepcopy(first)

    batch_one, _parse_one = guard.prepare(first, parse_coin)
    batch_two, parse_two = guard.prepare(second, parse_coin)

    assert [f.action for f in batch_one.drift] == ["auto_mapped"]
    assert batch_two.drift == ()
    # The rename is applied to every batch, recorded or not.
    assert parse_two(batch_two.items[0]).price_usd == Decimal("63000.5")


def test_a_source_without_declared_fields_passes_its_own_findings_through() -> None:
    guard = DriftGuard((), RULES)
    finding = DriftFinding("new", "Mystery", "recorded", scope="a.csv")
    batch = Batch(items=[], checkpoint={}, drift=(finding,))

    prepared, parse = guard.prepare(batch, parse_coin)
    again, _ = guard.prepare(batch, parse_coin)

    assert prepared.drift == (finding,)
    assert again.drift == ()
    assert parse is parse_coin


def test_a_csv_header_that_maps_to_nothing_is_a_new_field_of_its_file() -> None:
    layout = layout_for_headers("BTC-USD.csv", ("Date", "Close", "Adj Close", "Volume", "Mystery"))

    assert layout.drift() == (
        DriftFinding(
            "new",
            "Mystery",
            "recorded",
            detail={"file": "BTC-USD.csv", "kept_in": "extra"},
            scope="BTC-USD.csv",
        ),
    )
