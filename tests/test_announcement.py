"""Payload parsing: plain text or JSON; every bad payload is refused with a reason, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.announcement import (
    PRIORITY_LEVELS,
    Announcement,
    Defaults,
    PayloadRejected,
    level_of,
    parse_payload,
    parse_priority,
)

LIMIT = 16384


def rejection(payload: bytes) -> PayloadRejected:
    with pytest.raises(PayloadRejected) as caught:
        parse_payload(payload, LIMIT)
    return caught.value


def test_plain_text_gets_a_generated_id_and_normal_priority() -> None:
    first = parse_payload(b"  The laundry is done.\n", LIMIT)
    second = parse_payload(b"The laundry is done.", LIMIT)
    assert first.text == "The laundry is done."
    assert first.priority == PRIORITY_LEVELS["normal"] == 50
    assert first.priority_name == "normal"
    assert first.id and first.id != second.id


DEFAULTS = Defaults({"low": 3600, "normal": 900, "high": 300, "critical": 120})


def test_json_keeps_text_id_and_priority_and_fills_defaults() -> None:
    payload = json.dumps({"text": "Smoke in the kitchen", "id": "smoke-1", "priority": "critical"})
    assert parse_payload(payload.encode(), LIMIT, now=1000, defaults=DEFAULTS) == Announcement(
        "smoke-1", "Smoke in the kitchen", 100, expires_at=1120, interrupt=True
    )


def test_every_field() -> None:
    payload = {
        "text": "Dinner",
        "id": "d1",
        "priority": 60,
        "ttl": 30,
        "interrupt": True,
        "on_preempt": "resume",
        "volume": 0.5,
        "chime": "bell",
        "repeat": 3,
    }
    assert parse_payload(json.dumps(payload).encode(), LIMIT, now=10) == Announcement(
        "d1", "Dinner", 60, 40.0, True, "resume", 0.5, "bell", 3
    )


def test_expires_at_takes_unix_seconds_or_iso_time_with_a_zone() -> None:
    iso = b'{"text": "x", "expires_at": "2026-11-21T18:00:00+01:00"}'
    assert parse_payload(iso, LIMIT).expires_at == 1795280400.0
    assert parse_payload(b'{"text": "x", "expires_at": 1795280400}', LIMIT).expires_at == 1795280400


@pytest.mark.parametrize(
    ("priority", "interrupts", "ttl"),
    [("low", False, 3600), ("normal", False, 900), ("high", True, 300), (95, True, 300)],
)
def test_defaults_follow_the_priority_level(priority: object, interrupts: bool, ttl: int) -> None:
    payload = json.dumps({"text": "x", "priority": priority}).encode()
    announcement = parse_payload(payload, LIMIT, now=0, defaults=DEFAULTS)
    assert (announcement.interrupt, announcement.expires_at) == (interrupts, ttl)
    assert announcement.chime is True  # the level's default chime


def test_levels_of_integer_priorities() -> None:
    assert [level_of(p) for p in (0, 19, 20, 49, 50, 79, 80, 99, 100)] == [
        "low", "low", "low", "low", "normal", "normal", "high", "high", "critical",
    ]  # fmt: skip


def test_text_that_merely_mentions_braces_is_plain_text() -> None:
    assert parse_payload(b"Say {this}", LIMIT).text == "Say {this}"


def test_unicode_text_is_kept() -> None:
    assert parse_payload("Grüße, Zoë — 早上好".encode(), LIMIT).text == "Grüße, Zoë — 早上好"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b" \n\t ", "empty payload"),
        (b"caf\xe9", "payload is not UTF-8 (bad byte at offset 3)"),
        (b"{not json", "invalid JSON: Expecting property name enclosed in double quotes"),
        (b'{"text": "a"} trailing', "invalid JSON: Extra data"),
        (b'{"text": 5}', "text: Input should be a valid string"),
        (b'{"id": "x"}', "text: is required"),
        (b'{"text": "   "}', "text: is empty"),
        (b'{"text": "hi", "prio": 1}', "unknown field 'prio'"),
        (b'{"text": "hi", "id": ""}', "id: String should have at least 1 character"),
        (b'{"text": "hi", "priority": 101}', "priority: must be low, normal, high, critical"),
        (b'{"text": "hi", "priority": true}', "priority: must be low, normal, high, critical"),
        (b"bell\x07", "text contains control characters"),
        (b'{"text": "hi", "ttl": 0}', "ttl: Input should be greater than 0"),
        (b'{"text": "hi", "ttl": 5, "expires_at": 9}', "give ttl or expires_at, not both"),
        (b'{"text": "hi", "expires_at": "tomorrow"}', "expires_at: must be Unix seconds or an ISO"),
        (b'{"text": "hi", "expires_at": "2026-11-21T18:00"}', "expires_at: needs a time zone"),
        (b'{"text": "hi", "volume": 1.5}', "volume: Input should be less than or equal to 1"),
        (b'{"text": "hi", "repeat": 6}', "repeat: Input should be less than or equal to 5"),
        (b'{"text": "hi", "on_preempt": "later"}', "on_preempt: Input should be 'restart'"),
        (b'{"text": "hi", "interrupt": "yes"}', "interrupt: Input should be a valid boolean"),
        (b'{"text": "hi", "chime": "gong"}', "chime: chime 'gong': not a built-in chime"),
        (b'{"text": "hi", "chime": "x.wav"}', "chime: chime 'x.wav': give an absolute path"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    assert rejection(payload).reason.startswith(reason)


def test_oversized_payload_names_the_limit() -> None:
    assert rejection(b"a" * (LIMIT + 1)).reason == (
        f"payload is {LIMIT + 1} bytes, over the {LIMIT}-byte limit"
    )
    assert parse_payload(b"a" * LIMIT, LIMIT).text == "a" * LIMIT


def test_a_rejected_json_payload_keeps_its_id_for_the_event() -> None:
    assert rejection(b'{"id": "abc", "text": ""}').announcement_id == "abc"
    assert rejection(b'{"id": 7, "text": "x"}').announcement_id is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("low", 20), ("Normal", 50), ("high", 80), ("critical", 100), (0, 0), (100, 100), (73, 73)],
)
def test_priorities(value: object, expected: int) -> None:
    assert parse_priority(value) == expected


@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_rejected_with_a_reason(payload: bytes) -> None:
    try:
        announcement = parse_payload(payload, 200)
    except PayloadRejected as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert announcement.text.strip() and announcement.id
        assert len(payload) <= 200


@given(
    st.dictionaries(
        st.sampled_from(
            ["text", "id", "priority", "ttl", "volume", "repeat", "chime", "interrupt", "extra"]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.text(max_size=20)),
    )
)
def test_any_json_object_is_parsed_or_rejected_naming_a_field(data: dict[str, object]) -> None:
    try:
        parse_payload(json.dumps(data).encode(), LIMIT)
    except PayloadRejected as exc:
        named = exc.reason.removeprefix("unknown field ").split(":")[0].strip("'")
        assert named in data or named == "text"  # the reason names the field at fault
