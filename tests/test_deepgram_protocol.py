"""The Deepgram protocol and the shared protocol helpers, without any I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.voice import deepgram as dg
from herald.voice.protocol import FailureKind, SlidingBudget, split_text
from herald.voice.socket import Backoff


def test_client_messages() -> None:
    assert json.loads(dg.speak("Grüße")) == {"type": "Speak", "text": "Grüße"}
    assert json.loads(dg.FLUSH) == {"type": "Flush"}
    assert json.loads(dg.CLOSE) == {"type": "Close"}
    assert json.loads(dg.clear()) == {"type": "Clear"}
    assert json.loads(dg.clear("Reset")) == {"type": "Reset"}


def test_socket_url_fixes_model_encoding_and_rate() -> None:
    assert dg.socket_url("wss://api.eu.deepgram.com/v1/speak", "aura-2-thalia-en", 48000) == (
        "wss://api.eu.deepgram.com/v1/speak?model=aura-2-thalia-en&encoding=linear16"
        "&sample_rate=48000"
    )


@pytest.mark.parametrize(("device", "asked"), [(48000, 48000), (16000, 16000), (44100, 48000)])
def test_the_device_rate_is_asked_for_when_deepgram_offers_it(device: int, asked: int) -> None:
    assert dg.request_rate(device) == asked


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (b"\x01\x02", dg.Audio(b"\x01\x02")),
        ('{"type":"Flushed","sequence_id":3}', dg.Flushed(3)),
        ('{"type":"Cleared","sequence_id":"4"}', dg.Cleared(4)),
        ('{"type":"Cleared"}', dg.Cleared(None)),
        ('{"type":"Flushed","sequence_id":true}', dg.Flushed(None)),
        (
            '{"type":"Metadata","request_id":"r1","model_name":"aura-2-thalia-en"}',
            dg.Metadata("r1", "aura-2-thalia-en"),
        ),
        (
            '{"type":"Warning","warn_code":"EXCESSIVE_FLUSH","warn_msg":"slow down"}',
            dg.Warning("EXCESSIVE_FLUSH", "slow down"),
        ),
        (
            '{"type":"Warning","code":"EXCESSIVE_FLUSH","description":"slow down"}',
            dg.Warning("EXCESSIVE_FLUSH", "slow down"),
        ),
        ('{"type":"Error","err_code":"X","err_msg":"bad"}', dg.Error("X", "bad")),
        ("not json", dg.Unknown("not json")),
        ('["a list"]', dg.Unknown('["a list"]')),
        ('{"type":"Novel"}', dg.Unknown('{"type":"Novel"}')),
    ],
)
def test_decode(frame: str | bytes, event: dg.ServerEvent) -> None:
    assert dg.decode(frame) == event


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        (1000, "", FailureKind.TRANSIENT),
        (1003, "MESSAGE-0000", FailureKind.TRANSIENT),
        (1008, "DATA-0000", FailureKind.CONFIG),
        (1008, "DATA-0001", FailureKind.RATE_LIMITED),
        (1009, "BIG-0001", FailureKind.TRANSIENT),
        (1011, "NET-0000", FailureKind.TRANSIENT),
        (1011, "NET-0001", FailureKind.TRANSIENT),
        (1011, "NET-0003", FailureKind.LIFETIME),
        (None, "", FailureKind.TRANSIENT),
    ],
)
def test_close_codes(code: int | None, reason: str, kind: FailureKind) -> None:
    failure = dg.classify_close(code, reason)
    assert failure.kind is kind
    assert (f"{code} {reason}".strip() if code else "no close frame") in failure.detail


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, FailureKind.CONFIG),
        (401, FailureKind.AUTH),
        (402, FailureKind.AUTH),
        (403, FailureKind.AUTH),
        (429, FailureKind.RATE_LIMITED),
        (503, FailureKind.TRANSIENT),
    ],
)
def test_handshake_statuses(status: int, kind: FailureKind) -> None:
    failure = dg.classify_handshake(status, "SOME-CODE")
    assert failure.kind is kind
    assert f"HTTP {status} SOME-CODE" in failure.detail
    assert failure.kind.needs_a_person == (status in (400, 401, 402, 403))


def test_split_prefers_sentences_then_words() -> None:
    text = "First sentence here. Second one! And a third? " + "word " * 30
    pieces = split_text(text, 40)
    assert pieces[:2] == [
        "First sentence here. Second one!",
        "And a third? word word word word word",
    ]
    assert all(len(piece) <= 40 for piece in pieces)


def test_split_cuts_a_word_longer_than_the_limit() -> None:
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


@given(st.text(max_size=600), st.integers(5, 120))
def test_split_never_exceeds_the_limit_and_loses_nothing(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(0 < len(piece) <= limit for piece in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_budget_delays_until_old_characters_leave_the_window() -> None:
    budget = SlidingBudget(2400, window_s=60)
    assert budget.delay(2000, now=0) == 0
    budget.spend(2000, now=0)
    assert budget.delay(400, now=10) == 0
    budget.spend(400, now=10)
    assert budget.delay(1, now=20) == 40 + SlidingBudget.MARGIN_S  # the first 2000 leave at t=60
    assert budget.delay(1, now=60.5) == 0
    with pytest.raises(ValueError, match="never fit"):
        budget.delay(2401, now=0)


@given(st.lists(st.tuples(st.floats(0, 30), st.integers(1, 2000)), max_size=30))
def test_following_the_budget_never_breaks_the_window(sends: list[tuple[float, int]]) -> None:
    budget = SlidingBudget(2400, window_s=60)
    now, history = 0.0, []
    for gap, count in sends:
        now += gap
        now += budget.delay(count, now)
        budget.spend(count, now)
        history.append((now, count))
        in_window = sum(c for t, c in history if t > now - 60)
        assert in_window <= 2400


def test_backoff_grows_caps_and_resets() -> None:
    backoff = Backoff(first_s=1, cap_s=8)
    delays = [backoff.next_delay() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 1
