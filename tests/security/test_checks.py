"""The suite's rules catch what they are for, and do not take an echo of the request for a
leak: a rule that found nothing in the real answers must be able to find something."""

from __future__ import annotations

import pytest

from tests.security.checks import Exchange, problems
from tests.security.target import logged_tracebacks

LEAKS = [
    (500, '{"errors": [{"message": "boom"}]}', "HTTP 500"),
    (
        200,
        '{"errors": [{"extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}',
        "INTERNAL_SERVER_ERROR",
    ),
    (400, 'Traceback (most recent call last):\n  File "x.py", line 3', "a traceback"),
    (200, '{"data": {"origin": "/srv/kasparro/data/prices.csv:2"}}', "a file path"),
    (200, '{"data": {"error": "InjectedFailure: injected failure after 1 rows"}}', "an exception"),
    (200, '{"errors": [{"message": "[SQL: SELECT prices.id FROM prices]"}]}', "SQL"),
    (200, '{"errors": [{"message": "asyncpg said no"}]}', "a library name"),
    (200, '{"errors": [{"message": "in server/app.py"}]}', "a source file"),
]


@pytest.mark.parametrize(("status", "body", "expected"), LEAKS)
def test_rules_catch_a_leak(status: int, body: str, expected: str) -> None:
    found = problems(Exchange("case", "{ health { database } }", status, body, "application/json"))
    assert any(issue.startswith(expected) for issue in found), found


def test_rules_catch_a_private_path() -> None:
    exchange = Exchange("case", "", 200, '{"a": "relative/to/the/data/dir"}', "application/json")
    assert problems(exchange, private_paths=["relative/to"])


def test_an_echo_of_the_request_is_not_a_leak() -> None:
    sent = '{ etlRuns(source: "ValueError /tmp/x SELECT a FROM b") { totalCount } }'
    body = '{"errors": [{"message": "unknown source \'ValueError /tmp/x SELECT a FROM b\'"}]}'
    assert problems(Exchange("case", sent, 200, body, "application/json")) == []


def test_a_clean_answer_has_no_problem() -> None:
    body = '{"data": {"health": {"database": true}}, "extensions": {"requestId": "abc"}}'
    assert (
        problems(Exchange("case", "{ health { database } }", 200, body, "application/json")) == []
    )


def test_tracebacks_in_the_log_are_named_with_their_case() -> None:
    log = (
        '{"event": "unexpected error in resolver", "request_id": "r1", "exception": '
        '"Traceback (most recent call last):\\n  File \\"a.py\\", line 1\\nKeyError: 1"}\n'
        '{"event": "fine", "request_id": "r2"}\n'
    )
    assert logged_tracebacks(log, {"r1": "the case"}) == [
        "unexpected error in resolver: KeyError: 1 (after: the case)"
    ]
