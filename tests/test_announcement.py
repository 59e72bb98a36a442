"""Payload parsing: plain text or JSON; every bad payload is refused with a reason, nothing else."""

from __future__ import annotations

import json
import math
import unicodedata
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.announcement import (
    MAX_ID_LENGTH,
    MAX_TTL_S,
    NO_DEFAULTS,
    PRIORITY_LEVELS,
    Announcement,
    Defaults,
    PayloadRejected,
    level_of,
    media_announcement,
    parse_payload,
    parse_priority,
)
from herald.text import MAX_COMBINING_MARKS, clean_text

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
    now = 1795280400 - 3600
    assert parse_payload(iso, LIMIT, now).expires_at == 1795280400.0
    unix = b'{"text": "x", "expires_at": 1795280400}'
    assert parse_payload(unix, LIMIT, now).expires_at == 1795280400


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


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl: one emoji
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want" (Persian), ZWNJ


def both_ways(text: str) -> list[bytes]:
    """The text as a plain payload and as a JSON `text`."""
    return [text.encode(), json.dumps({"text": text}).encode()]


# What Home Assistant templates produce, and what the voice, the journal and the cache get.
LEGITIMATE_TEXT = [
    ("21\u00a0degrees", "21 degrees"),  # no-break space
    ("10\u202f000 steps", "10 000 steps"),  # narrow no-break space
    ("em\u2003space and ideographic\u3000space", "em space and ideographic space"),
    (f"Family {FAMILY} home", f"Family {FAMILY} home"),
    ("\u0915\u094d\u200d\u0937", "\u0915\u094d\u200d\u0937"),  # Devanagari half-form: ZWJ kept
    (PERSIAN, PERSIAN),  # ZWNJ kept
    ("Wasch\u00admaschine fertig", "Waschmaschine fertig"),  # soft hyphen
    ("\ufeffGood morning", "Good morning"),  # byte order mark
    ("zero\u200bwidth\u2060joined", "zerowidthjoined"),  # zero-width space, word joiner
    ("\u202bbidi\u202c \u2067isolate\u2069 \u200emark\u200f", "bidi isolate mark"),
    ("line\u2028separator", "line separator"),
    ("para\u2029graph", "para graph"),
    ("next\u0085line", "next line"),  # NEL: a line break, not a control to refuse
    ("Cafe\u0301", "Caf\u00e9"),  # NFC: e and a combining acute become one letter
    ("1\ufe0f\u20e3 new message", "1\ufe0f\u20e3 new message"),  # keycap: two marks
    ("Line one.\nLine two.\tTabbed.", "Line one.\nLine two.\tTabbed."),
    ("\u00a0 padded \u2029", "padded"),
]


@pytest.mark.parametrize(("text", "spoken"), LEGITIMATE_TEXT)
def test_legitimate_text_is_accepted_and_cleaned(text: str, spoken: str) -> None:
    for payload in both_ways(text):
        assert parse_payload(payload, LIMIT).text == spoken


@pytest.mark.parametrize("control", [*"\x00\x07\x08\x0b\x0c\x1b\x7f\x9b"])
def test_control_characters_are_refused_as_plain_text_and_as_json(control: str) -> None:
    text = f"Door{control} open"
    code = f"U+{ord(control):04X}"
    assert rejection(text.encode()).reason == f"text contains control characters ({code})"
    as_json = json.dumps({"text": text}).encode()
    assert rejection(as_json).reason == f"text: contains control characters ({code})"


@pytest.mark.parametrize("text", ["\u200b", "\ufeff\u00ad", "\u2028\u00a0\u200e"])
def test_text_of_only_invisible_characters_is_empty(text: str) -> None:
    assert rejection(text.encode()).reason == "text is empty"
    assert rejection(json.dumps({"text": text}).encode()).reason == "text: is empty"


def test_a_json_payload_may_start_with_a_byte_order_mark() -> None:
    assert parse_payload(b'\xef\xbb\xbf{"text": "hi", "id": "bom"}', LIMIT).id == "bom"


def test_zalgo_marks_are_capped_per_letter() -> None:
    marks = "\u0316\u0330\u0347\u0353" * 1000  # 4,000 marks on one letter: 8 KB of UTF-8
    spoken = parse_payload(f"Z{marks}algo".encode(), LIMIT).text
    assert spoken.startswith("Z") and spoken.endswith("algo")
    assert len(spoken) == len("Zalgo") + MAX_COMBINING_MARKS


def test_marks_interleaved_with_joiners_are_capped_too() -> None:
    spoken = parse_payload(("e" + "\u0301\u200d" * 2000).encode(), LIMIT).text
    assert len(spoken) <= 1 + MAX_COMBINING_MARKS


NOW = 1_800_000_000.0


def reason_at_now(payload: bytes) -> str:
    with pytest.raises(PayloadRejected) as caught:
        parse_payload(payload, 1 << 20, NOW)  # the limit of `herald say`
    return caught.value.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"text": "hi", "expires_at": NaN}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "expires_at": Infinity}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "expires_at": -Infinity}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "expires_at": 1e309}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "ttl": NaN}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "volume": -1e400}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "other": [NaN]}', "invalid JSON: numbers must be finite"),
        (b'{"text": "hi", "priority": ' + b"9" * 5001 + b"}", "invalid JSON: a number has too"),
        (b'{"text": "hi", "ttl": 1' + b"0" * 200 + b".5}", "invalid JSON: a number has too"),
        (b'{"text": "hi", "x": ' + b"[" * 100_000 + b"}", "invalid JSON: nested too deeply"),
        (b'{"text": "hi", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "invalid JSON: nested too deeply"),
        (b'{"text": "\\ud800 hi"}', "invalid JSON: a string has an unpaired surrogate (U+D800)"),
        (b'{"text": "hi", "\\udfff": 1}', "invalid JSON: a string has an unpaired surrogate"),
        (b'{"text": "hi", "expires_at": 253402300799}', "expires_at: is more than 7 days ahead"),
        (b'{"text": "hi", "expires_at": "9999-12-31T23:59:59+00:00"}', "expires_at: is more than"),
        (b'{"text": "hi", "expires_at": 1800604801}', "expires_at: is more than 7 days ahead"),
        (b'{"text": "hi", "ttl": 604801}', "ttl: Input should be less than or equal to 604800"),
        (b'{"text": "hi", "repeat": 10000000000000000000000}', "repeat: Input should be less"),
    ],
)
def test_numbers_must_be_finite_and_bounded(payload: bytes, reason: str) -> None:
    assert reason_at_now(payload).startswith(reason)


def test_an_expiry_up_to_seven_days_ahead_or_in_the_past_is_taken() -> None:
    latest = json.dumps({"text": "hi", "expires_at": NOW + MAX_TTL_S}).encode()
    assert parse_payload(latest, LIMIT, NOW).expires_at == NOW + MAX_TTL_S
    past = parse_payload(b'{"text": "hi", "expires_at": 5}', LIMIT, NOW)
    assert past.expired(NOW)  # the scheduler reports it expired, with an event


def test_large_but_valid_numbers_are_judged_by_their_field() -> None:
    payload = b'{"text": "hi", "volume": 1e300}'
    assert reason_at_now(payload) == "volume: Input should be less than or equal to 1"


@pytest.mark.parametrize("ident", ["küche-1", "台所のタイマー", "\U0001f525-alarm", "a b"])
def test_printable_ids_in_any_script_are_kept(ident: str) -> None:
    assert parse_payload(json.dumps({"text": "hi", "id": ident}).encode(), LIMIT).id == ident


@pytest.mark.parametrize("ident", ["a\nb", "tab\t", "zw\u200bsp", "nb\u00a0sp", "\x1b[2J"])
def test_invisible_ids_are_refused_and_not_echoed(ident: str) -> None:
    refused = rejection(json.dumps({"text": "hi", "id": ident}).encode())
    assert refused.reason == "id: must be printable text"
    assert refused.announcement_id is None


def test_a_hostile_field_name_is_shown_escaped_on_one_line() -> None:
    refused = rejection(json.dumps({"text": "hi", "a\nb\x1b" + "x" * 500: 1}).encode())
    assert refused.reason.startswith("unknown field 'a\\nb\\x1bxxx")
    assert "\n" not in refused.reason and len(refused.reason) < 60


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
        (b'{"text": "hi", "chime": "x.wav"}', "chime: chime 'x.wav': not a built-in chime"),
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


def assert_fit_to_announce(announcement: Announcement, now: float) -> None:
    """What the rest of Herald may rely on for every accepted payload."""
    text = announcement.text
    assert text and text == clean_text(text)
    assert not [c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"]
    text.encode("utf-8")  # no unpaired surrogate: it can be journalled and sent
    assert announcement.id.isprintable() and len(announcement.id) <= MAX_ID_LENGTH
    assert announcement.expires_at is not None and math.isfinite(announcement.expires_at)
    assert announcement.expires_at <= now + MAX_TTL_S
    assert announcement.volume is None or 0.0 <= announcement.volume <= 1.0


def assert_one_line(refused: PayloadRejected) -> None:
    assert refused.reason and "\n" not in refused.reason and refused.reason.isprintable()


@given(st.text())
def test_any_text_is_announced_clean_or_rejected(text: str) -> None:
    try:
        announcement = parse_payload(text.encode(), 1 << 20, NOW)
    except PayloadRejected as exc:
        assert_one_line(exc)
    else:
        assert_fit_to_announce(announcement, NOW)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from(
    ["text", "id", "priority", "ttl", "expires_at", "interrupt", "on_preempt", "volume", "repeat"]
) | st.text(max_size=6)
ZONES = st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
FIELD_VALUES = (
    JSON_VALUES
    | st.datetimes(timezones=ZONES).map(datetime.isoformat)
    | st.floats(NOW - 60, NOW + 2 * MAX_TTL_S)
    | st.sampled_from(["low", "high", "resume", "drop"])
)


@given(
    st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=5) | JSON_VALUES,
    st.none() | st.text(),
)
def test_any_json_is_announced_fit_or_rejected(value: object, text: str | None) -> None:
    if isinstance(value, dict) and text is not None:
        value["text"] = text
    payload = json.dumps(value).encode()  # NaN and Infinity included: json writes them
    try:
        announcement = parse_payload(payload, 1 << 20, NOW)  # a non-object is plain text
    except PayloadRejected as exc:
        assert_one_line(exc)
    else:
        assert_fit_to_announce(announcement, NOW)


def test_media_from_home_assistant_is_an_announcement_that_never_shows_its_token() -> None:
    url = "https://ha.local:8123/api/esphome/ffmpeg_proxy/abc/def.wav?authSig=s3cret"
    media = media_announcement(url, PRIORITY_LEVELS["high"], 1000.0, NO_DEFAULTS, "esphome")
    assert media.media_url == url and media.source == "esphome"
    assert media.text == "media from https://ha.local:8123"  # the path can hold a token
    assert media.interrupt and media.chime is False and media.cache is False
    assert media.expires_at == 1000.0 + NO_DEFAULTS.ttl_for(PRIORITY_LEVELS["high"])
    for bad, reason in (
        ("file:///etc/passwd", "must be http:// or https://"),
        ("http://ha/a b.wav", "spaces or control characters"),
        ("http://ha/\x1b[2J.wav", "spaces or control characters"),
        ("http://ha/" + "a" * 5000, "longer than 4096"),
    ):
        with pytest.raises(PayloadRejected, match=reason):
            media_announcement(bad, 50, 0.0, NO_DEFAULTS, "esphome")
