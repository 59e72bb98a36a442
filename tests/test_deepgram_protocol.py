"""The Deepgram protocol and the shared protocol helpers, without any I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.budget import SlidingBudget
from herald.voice import deepgram as dg
from herald.voice.deepgram import FlushLedger, Verdict
from herald.voice.protocol import FailureKind, split_text
from herald.voice.socket import Backoff
from tests.fake_deepgram import PROSE, close_reason


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
        ('{"type":"Flushed","sequence_id":3.0}', dg.Flushed(3)),  # the SDK types it a number
        ('{"type":"Flushed","sequence_id":3.5}', dg.Flushed(None)),
        ('{"type":"Flushed","sequence_id":null}', dg.Flushed(None)),
        ('{"type":"Flushed","sequence_id":"x"}', dg.Flushed(None)),
        ('{"type":"Flushed","sequence_id":[1]}', dg.Flushed(None)),
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
        (1011, "NET-0001", FailureKind.IDLE),
        (1011, "NET-0003", FailureKind.LIFETIME),
        (None, "", FailureKind.TRANSIENT),
    ],
)
def test_close_codes(code: int | None, reason: str, kind: FailureKind) -> None:
    failure = dg.classify_close(code, reason)
    assert failure.kind is kind
    assert (f"{code} {reason}".strip() if code else "no close frame") in failure.detail


CODED_CLOSES = [
    (1003, "MESSAGE-0000", FailureKind.TRANSIENT),
    (1008, "DATA-0000", FailureKind.CONFIG),
    (1008, "DATA-0001", FailureKind.RATE_LIMITED),
    (1009, "BIG-0000", FailureKind.TRANSIENT),
    (1009, "BIG-0001", FailureKind.TRANSIENT),
    (1011, "NET-0000", FailureKind.TRANSIENT),
    (1011, "NET-0001", FailureKind.IDLE),
    (1011, "NET-0002", FailureKind.TRANSIENT),
    (1011, "NET-0003", FailureKind.LIFETIME),
]


def reason_forms(name: str) -> list[str]:
    """Every way a close reason may carry the code: first, in the fake's prose, in Deepgram's
    link form inside other words, in lower case, without the hyphen."""
    return [
        name,
        f"{name}: something went wrong",
        close_reason(name, "prose"),
        f"Closed. See https://dpgr.am/{name.replace('-', '').lower()} for details",
        name.lower(),
        name.replace("-", ""),
    ]


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [(code, form, kind) for code, name, kind in CODED_CLOSES for form in reason_forms(name)],
)
def test_close_reasons_are_read_in_every_form(code: int, reason: str, kind: FailureKind) -> None:
    assert dg.classify_close(code, reason).kind is kind
    assert reason in dg.classify_close(code, reason).detail  # the log line quotes it whole


def test_every_code_the_fake_sends_has_prose() -> None:
    assert {name for _, name, _ in CODED_CLOSES} == set(PROSE)


@pytest.mark.parametrize(
    "reason",
    ["NET-00011", "INTERNET-0001", "dpgr.am/net001", "network 0001", "BIGNET-0003", ""],
)
def test_look_alikes_name_no_code(reason: str) -> None:
    assert dg.reason_code(reason) is None


# --- which Flush a Flushed answers ----------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["spoken", "cut-none", "cut-before", "cut-after"]), max_size=25))
def test_the_ledger_ends_each_announcement_at_its_own_flushed(fates: list[str]) -> None:
    """A server that numbers Flushes 0, 1, 2...: whatever happens to the cut ones' Flushed
    (never, before Cleared, after it, in the next announcement), none ends another's."""
    ledger = FlushLedger()
    late: list[int] = []
    for number, fate in enumerate(fates):
        ledger.flush()
        for stale in late:  # arrives in this announcement, before its own Flushed
            assert ledger.answer(stale) is Verdict.STALE
        late.clear()
        if fate == "spoken":
            assert ledger.answer(number) is Verdict.CURRENT
            continue
        ledger.clear()
        if fate == "cut-before":
            assert ledger.answer(number) is Verdict.STALE
        elif fate == "cut-after":
            late.append(number)
    assert not ledger.contradicted
    assert ledger.confirmed == ("spoken" in fates)


def ledger_after(*steps: str | int | None) -> tuple[FlushLedger, list[Verdict]]:
    """Replay `flush`, `clear` and answers (a sequence_id, or None) on a fresh ledger."""
    ledger, verdicts = FlushLedger(), []
    for step in steps:
        if step == "flush":
            ledger.flush()
        elif step == "clear":
            ledger.clear()
        else:
            assert not isinstance(step, str)
            verdicts.append(ledger.answer(step))
    return ledger, verdicts


@pytest.mark.parametrize(
    ("steps", "verdicts", "abandoned"),
    [
        # no sequence_id, nothing cut: the only Flush outstanding is the announcement's own
        (("flush", None, "flush", None), [Verdict.CURRENT] * 2, set()),
        # no sequence_id before Cleared: the cut Flush is the only one that can answer
        (("flush", "clear", None, "flush", None), [Verdict.STALE, Verdict.CURRENT], set()),
        # no sequence_id while a cut Flush may still answer: cannot tell
        (("flush", "clear", "flush", None), [Verdict.UNSURE], {0}),
        # counted from 1: ended where only its own Flush is outstanding, then distrusted
        (("flush", 1, "flush", 2), [Verdict.CURRENT] * 2, set()),
        (("flush", "clear", "flush", 2), [Verdict.UNSURE], {0}),
        # always 0: looks right once, then cannot be told apart while a cut one is out
        (("flush", 0, "flush", "clear", "flush", 0), [Verdict.CURRENT, Verdict.UNSURE], {1}),
    ],
)
def test_the_ledger_falls_back_when_the_numbers_say_nothing(
    steps: tuple[str | int | None, ...], verdicts: list[Verdict], abandoned: set[int]
) -> None:
    ledger, seen = ledger_after(*steps)
    assert seen == verdicts
    assert ledger.abandoned == abandoned
    assert ledger.contradicted


def test_a_cut_flush_that_is_never_answered_stays_abandoned() -> None:
    ledger, seen = ledger_after("flush", "clear", "flush", 1, "flush", "clear", "flush", 0, 3)
    assert seen == [Verdict.CURRENT, Verdict.STALE, Verdict.CURRENT]
    assert ledger.abandoned == {2}
    assert ledger.confirmed and not ledger.contradicted


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
