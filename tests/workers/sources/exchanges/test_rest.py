"""Coinbase's forward pages: windows of `limit` ids asked for with `after`, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from workers.sources.exchanges.model import Trade
from workers.sources.exchanges.pairs import coinbase_pair
from workers.sources.exchanges.rest import ForwardTrades

PAIR = coinbase_pair("BTC-USD")


def trades(*ids: int) -> list[Trade]:
    """A page as Coinbase sends it: newest first."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return [Trade("coinbase", PAIR, i, moment, Decimal(1), Decimal(1)) for i in sorted(ids)[::-1]]


def test_each_window_is_asked_for_by_its_end_and_taken_in_id_order() -> None:
    pages = ForwardTrades("BTC-USD", after_id=100, limit=3)
    assert pages.next_request().params == {"limit": "3", "after": "104"}
    assert [t.trade_id for t in pages.advance(trades(101, 102, 103))] == [101, 102, 103]
    assert not pages.finished
    assert pages.next_request().params["after"] == "107"
    assert [t.trade_id for t in pages.advance(trades(104, 105))] == [104, 105]
    assert pages.finished  # the page stopped short of its window: the present


def test_a_window_stops_at_the_first_id_the_stream_delivered() -> None:
    pages = ForwardTrades("BTC-USD", after_id=100, until_id=103, limit=5)
    assert pages.next_request().params["after"] == "103"
    assert [t.trade_id for t in pages.advance(trades(98, 99, 100, 101, 102))] == [101, 102]
    assert pages.finished


def test_nothing_to_fetch_is_finished_at_once() -> None:
    assert ForwardTrades("BTC-USD", after_id=100, until_id=101).finished
    pages = ForwardTrades("BTC-USD", after_id=100, limit=3)
    assert pages.advance(trades(98, 99, 100)) == []  # the present is the last id kept
    assert pages.finished
