"""Decoding ``tailscale serve``'s identity headers, RFC 2047 Q-encoded as Go's ``mime.QEncoding`` does."""

from __future__ import annotations

import json

import pytest

from tailgate.errors import AccessDenied
from tailgate.identity.serve import (
    FORWARDING_HEADERS,
    IDENTITY_HEADERS,
    decode_header_value,
    forwarded_for,
    parse_app_capabilities,
)


def go_q_encode(value: str) -> str:
    """A replica of Go's ``mime.QEncoding.Encode("utf-8", value)``: 75-byte words, runes never split."""
    if all(" " <= c <= "~" for c in value):
        return value
    words: list[str] = []
    current = ""
    for char in value:
        encoded = "".join(
            "_" if b == 0x20 else chr(b) if 0x21 <= b <= 0x7E and chr(b) not in "=?_" else f"={b:02X}"
            for b in char.encode("utf-8")
        )
        if len(current) + len(encoded) > 75 - len("=?utf-8?q?") - len("?="):
            words.append(current)
            current = ""
        current += encoded
    words.append(current)
    return " ".join(f"=?utf-8?q?{word}?=" for word in words)


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com",
        "René Dupont",
        "René Dupont 🐿",
        json.dumps(
            {"tailscale.com/cap/aperture": [{"role": "admin", "note": "🐿 " + "x" * 150}]}, ensure_ascii=False
        ),
    ],
)
def test_round_trip_with_go_encoding(value: str) -> None:
    encoded = go_q_encode(value)
    assert decode_header_value(encoded) == value


def test_long_values_are_split_into_several_words() -> None:
    encoded = go_q_encode(json.dumps({"c": ["é" * 80]}, ensure_ascii=False))
    assert encoded.count("=?utf-8?q?") >= 3
    assert parse_app_capabilities(encoded) == {"c": ["é" * 80]}


def test_known_vector() -> None:
    assert decode_header_value("=?utf-8?q?Ren=C3=A9_Dupont?=") == "René Dupont"


def test_malformed_encoded_word_is_none() -> None:
    assert decode_header_value("=?x-unknown-charset?q?abc?=") is None


@pytest.mark.parametrize("value", ['{"a":', "[1, 2]", "null", "=?utf-8?q?=7B?="])
def test_malformed_app_capabilities_are_empty(value: str, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_app_capabilities(value) == {}
    assert "malformed Tailscale-App-Capabilities" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100.101.102.103", "100.101.102.103"), ("::ffff:100.1.2.3", "100.1.2.3"), (" fd7a::1 ", "fd7a::1")],
)
def test_forwarded_for(value: str, expected: str) -> None:
    assert forwarded_for({"x-forwarded-for": value}) == expected


def test_forwarded_for_absent_or_bad() -> None:
    assert forwarded_for({}) is None
    for value in ("1.2.3.4, 5.6.7.8", "1.2.3.4:80", "ai"):
        with pytest.raises(AccessDenied):
            forwarded_for({"x-forwarded-for": value})


def test_headers_the_proxy_strips() -> None:
    assert sorted(IDENTITY_HEADERS) == [
        "tailscale-app-capabilities",
        "tailscale-funnel-request",
        "tailscale-headers-info",
        "tailscale-user-login",
        "tailscale-user-name",
        "tailscale-user-profile-pic",
    ]
    assert sorted(FORWARDING_HEADERS) == [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ]
