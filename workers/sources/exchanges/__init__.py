"""Exchange sources' groundwork: Binance, Coinbase Exchange and Kraken spot.

One package rather than `workers/sources/<vendor>.py` modules because these are not `Source`s
yet: they are the pure, I/O-free protocol layer (message shapes, subscribe builders, ping
rules, REST requests and paginators) that the stream and backfill sources will drive, and the
three share a model, the pair rules and the USD rule. Layout:

    model.py     observations (Trade, Candle, Ticker), control events, ExchangeMessageError
    pairs.py     exchange symbols → (base, quote): BTCUSDT, BTC-USD, XBT/USD, XXBTZUSD
    quotes.py    the USD rule: USD as is, stablecoins at a recorded rate, other quotes none
    protocol.py  KeepAlive (ping/pong rule) and RestRequest
    binance.py / coinbase.py / kraken.py   one exchange each: URLs, subscribe messages,
                 parse_message for the stream, parse_* for REST pages, backfill paginators
"""
