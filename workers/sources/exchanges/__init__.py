"""The exchange sources: Binance, Coinbase Exchange and Kraken spot, streamed live.

One package rather than `workers/sources/<vendor>.py` modules: the three share a model, the
pair rules and the USD rule, and each is a pure, I/O-free protocol layer (message shapes,
subscribe builders, ping rules, REST requests and paginators) under one connection layer and
one source (`source.py`, registered in `workers.sources.builtin`; the stream runner is
`workers.streams`). Layout:

    model.py     observations (Trade, Candle, Ticker), control events, ExchangeMessageError
    pairs.py     exchange symbols → (base, quote): BTCUSDT, BTC-USD, XBT/USD, XXBTZUSD
    quotes.py    the USD rule: USD as is, stablecoins at a recorded rate, other quotes none
    protocol.py  KeepAlive (ping/pong rule) and RestRequest
    binance.py / coinbase.py / kraken.py   one exchange each: URLs, subscribe messages,
                 parse_message for the stream, parse_* for REST pages, backfill paginators

and the connection layer that drives them (I/O):

    feed.py       ExchangeFeed: one exchange as a gap-free, ordered stream of trade batches
    connection.py the one WebSocket per exchange: URL, subscriptions, pings, staleness
    rest.py       missing trades over REST, page by page, oldest first
    stats.py      FeedStats, the feed's counters
    source.py     the `binance` / `coinbase` / `kraken` sources: pairs to coins, trades to
                  observations in USD, the stream hook the runner follows
"""
