"""The apiserver's ``?timeout=`` read from the raw query string: when dra-bridge's answer stops mattering."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from webhook.serving.http import _deadline


def request(query: bytes) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/validate", "query_string": query, "headers": []})


@pytest.mark.parametrize(
    ("query", "seconds"),
    [
        (b"timeout=5s", 4.9),
        (b"timeout=10s", 9.9),
        (b"a=1&timeout=2.5s", 2.4),
        (b"timeout=2.5s&b=2", 2.4),
        (b"timeout=0.05s", 0.0),  # never before it started
    ],
)
def test_the_timeout_the_apiserver_sends_sets_the_deadline_a_tenth_early(query: bytes, seconds: float) -> None:
    assert _deadline(request(query), 100.0) == pytest.approx(100.0 + seconds)


@pytest.mark.parametrize(
    "query", [b"", b"timeout=5", b"timeout=s", b"timeout=1.2.3s", b"xtimeout=5s", b"timeout=5m", b"timeout=-1s"]
)
def test_no_timeout_or_one_that_is_not_seconds_sets_no_deadline(query: bytes) -> None:
    assert _deadline(request(query), 100.0) is None
