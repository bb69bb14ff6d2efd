"""The compiled read path: hot query shapes turned into rows-to-JSON functions, once per document.

A document whose every root field is one the compiled path knows (`prices`, `latestPrices`,
`candles`, `assets`) with a selection it can render is compiled once per text: its fields are
collected (fragments, aliases, @include/@skip), and each root field gets a generated Python
function that turns the loader's rows straight into the response, without per-field resolution.
Anything else (other fields, errors, unusual requests) goes to the standard executor, whose
output the compiled path must equal exactly (tests/schema/compiled prove it by differential
tests).
"""
