"""What may be announced: the Announcement model and the parsing of MQTT payloads into it.

A payload is plain UTF-8 text, or a JSON object when it starts with `{`. Every way a payload can
be wrong raises PayloadRejected with a one-line reason that names what was wrong. The text is
cleaned (herald.text.clean_text) before anything else sees it, and refused only for control
characters or for being empty; every time and number is finite and bounded.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from herald.chime_names import payload_chime
from herald.logsafe import where_host
from herald.payload_json import InvalidJson, load_json
from herald.text import clean_text, first_control_character

PRIORITY_LEVELS: dict[str, int] = {"low": 20, "normal": 50, "high": 80, "critical": 100}
DEFAULT_PRIORITY = PRIORITY_LEVELS["normal"]
INTERRUPTS_BY_DEFAULT_FROM = PRIORITY_LEVELS["high"]
MAX_ID_LENGTH = 128
MAX_TTL_S = 7 * 24 * 3600
OnPreempt = Literal["restart", "resume", "drop"]


class PayloadRejected(ValueError):
    """A payload that cannot be announced. `announcement_id` is set when the payload named one."""

    def __init__(self, reason: str, announcement_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.announcement_id = announcement_id


@dataclass(frozen=True, slots=True)
class Announcement:
    """One thing to say, with everything that decides when and how it is said."""

    id: str
    text: str
    priority: int = DEFAULT_PRIORITY
    expires_at: float | None = None  # Unix time; None: never
    interrupt: bool = False  # may cut in on a less urgent announcement that is speaking
    on_preempt: OnPreempt = "restart"  # what happens to it when something cuts in on it
    volume: float | None = None  # 0.0-1.0; None: the configured default
    chime: str | bool = True  # True: the priority's default chime; False: none; else a name/path
    repeat: int = 1
    cache: bool = True  # play from the phrase cache if it is there, and keep it once spoken
    # Sent to several rooms: the key the nodes that got it agree on its start by (herald.sync).
    sync_key: str | None = None
    # Audio to play instead of speaking `text` (which then only describes it): a URL that Home
    # Assistant sent through the ESPHome API. `source` says where it came from, in its events.
    media_url: str | None = None
    source: str | None = None

    @property
    def level(self) -> str:
        """The priority level this announcement belongs to (the highest one at or below it)."""
        return level_of(self.priority)

    @property
    def priority_name(self) -> str:
        """The level's name when the priority is exactly one, else the number."""
        for name, value in PRIORITY_LEVELS.items():
            if value == self.priority:
                return name
        return str(self.priority)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def seconds_left(self, now: float) -> float:
        """How long until it goes stale (infinite without an expiry)."""
        return float("inf") if self.expires_at is None else self.expires_at - now


MAX_URL_LENGTH = 4096


def media_announcement(
    url: str, priority: int, now: float, defaults: Defaults, source: str
) -> Announcement:
    """An announcement that plays the audio at `url`; PayloadRejected if the URL cannot be."""
    if len(url) > MAX_URL_LENGTH:
        raise PayloadRejected(f"the media URL is longer than {MAX_URL_LENGTH} characters")
    if first_control_character(url) is not None or " " in url:
        raise PayloadRejected("the media URL has spaces or control characters")
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest:
        raise PayloadRejected("the media URL must be http:// or https://")
    return Announcement(
        id=new_id(),
        text=f"media from {where_host(url)}",
        priority=priority,
        expires_at=now + defaults.ttl_for(priority),
        interrupt=priority >= INTERRUPTS_BY_DEFAULT_FROM,
        chime=False,
        cache=False,
        media_url=url,
        source=source,
    )


def level_of(priority: int) -> str:
    """`low` below 50, `normal` below 80, `high` below 100, else `critical`."""
    name = "low"
    for level, value in PRIORITY_LEVELS.items():
        if priority >= value:
            name = level
    return name


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def parse_priority(value: object) -> int:
    """`low|normal|high|critical` or an integer 0-100, as a number."""
    if isinstance(value, bool):
        raise ValueError("must be low, normal, high, critical or an integer 0-100")
    if isinstance(value, int) and 0 <= value <= 100:
        return value
    if isinstance(value, str) and value.strip().lower() in PRIORITY_LEVELS:
        return PRIORITY_LEVELS[value.strip().lower()]
    raise ValueError("must be low, normal, high, critical or an integer 0-100")


def parse_time(value: object) -> float:
    """Unix seconds, or an ISO 8601 date-time with a time zone, as finite Unix seconds."""
    if isinstance(value, bool):
        raise ValueError("must be Unix seconds or an ISO 8601 time with a zone")
    if isinstance(value, int | float):
        return _finite_seconds(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be Unix seconds or an ISO 8601 time with a zone") from None
        if moment.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2026-11-21T18:00:00+01:00")
        return moment.timestamp()
    raise ValueError("must be Unix seconds or an ISO 8601 time with a zone")


def _finite_seconds(value: float) -> float:
    # NaN never compares as expired (and would unsettle the queue's order); infinity never
    # expires; an integer past float's range cannot even be converted.
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number of Unix seconds")
    return seconds


@dataclass(frozen=True)
class Defaults:
    """What a payload leaves out: the time to live of each priority level; and where the WAV
    files it may name as its chime are (None: it may name built-in chimes only)."""

    ttl_s: dict[str, float]
    chimes_dir: PurePath | None = None

    def ttl_for(self, priority: int) -> float:
        return self.ttl_s[level_of(priority)]


NO_DEFAULTS = Defaults({level: float(MAX_TTL_S) for level in PRIORITY_LEVELS})


class _JsonPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    priority: Any = DEFAULT_PRIORITY
    ttl: float | None = Field(None, gt=0, le=MAX_TTL_S, allow_inf_nan=False)
    expires_at: Any = None
    interrupt: bool | None = None
    on_preempt: OnPreempt = "restart"
    volume: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    chime: str | bool = True
    repeat: int = Field(1, ge=1, le=5)
    cache: bool = True

    @field_validator("text")
    @classmethod
    def _text_speakable(cls, value: str) -> str:
        return speakable_text(value)

    @field_validator("id")
    @classmethod
    def _id_printable(cls, value: str | None) -> str | None:
        # Ids are logged and sent in events: letters of any script, but nothing invisible.
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @field_validator("priority")
    @classmethod
    def _priority_known(cls, value: object) -> int:
        return parse_priority(value)

    @field_validator("expires_at")
    @classmethod
    def _expires_at_is_a_time(cls, value: object) -> float | None:
        return None if value is None else parse_time(value)

    @field_validator("chime")
    @classmethod
    def _chime_known(cls, value: str | bool, info: ValidationInfo) -> str | bool:
        """A built-in name or a WAV file in the chimes directory, kept as the payload gave it
        (`parse_payload` passes its Defaults as the context: {"defaults": ...})."""
        if isinstance(value, bool):
            return value
        context = info.context if isinstance(info.context, dict) else {}
        defaults = context.get("defaults", NO_DEFAULTS)
        payload_chime(value, defaults.chimes_dir)
        return value

    @field_validator("ttl", "volume", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)  # strict mode would refuse 30 where 30.0 is meant
            except OverflowError:
                raise ValueError("is out of range") from None
        return value


def parse_payload(
    payload: bytes, max_bytes: int, now: float = 0.0, defaults: Defaults = NO_DEFAULTS
) -> Announcement:
    """Turn one MQTT payload into an Announcement, or raise PayloadRejected saying why."""
    if len(payload) > max_bytes:
        raise PayloadRejected(f"payload is {len(payload)} bytes, over the {max_bytes}-byte limit")
    try:
        # A byte order mark is no part of the text (some Windows tools write one first).
        decoded = payload.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise PayloadRejected(f"payload is not UTF-8 (bad byte at offset {exc.start})") from None
    if not decoded.strip():
        raise PayloadRejected("empty payload")
    if decoded.lstrip().startswith("{"):
        return _parse_json(decoded.strip(), now, defaults)
    try:
        text = speakable_text(decoded)
    except ValueError as exc:
        raise PayloadRejected(f"text {exc}") from None
    return Announcement(
        id=new_id(),
        text=text,
        expires_at=now + defaults.ttl_for(DEFAULT_PRIORITY),
    )


def speakable_text(raw: str) -> str:
    """The cleaned text (herald.text.clean_text), or ValueError if it is empty or has control
    characters. Plain-text payloads and JSON `text` both come through here."""
    text = clean_text(raw)
    control = first_control_character(text)
    if control is not None:
        raise ValueError(f"contains control characters (U+{ord(control):04X})")
    if not text:
        raise ValueError("is empty")
    return text


def _parse_json(text: str, now: float, defaults: Defaults) -> Announcement:
    try:
        data = load_json(text)
    except InvalidJson as exc:
        raise PayloadRejected(str(exc)) from None
    if not isinstance(data, dict):
        raise PayloadRejected("invalid JSON: expected an object")
    given_id = _usable_id(data.get("id"))
    try:
        parsed = _JsonPayload.model_validate(data, context={"defaults": defaults})
    except ValidationError as exc:
        raise PayloadRejected(_first_error(exc), given_id) from None
    if parsed.ttl is not None and parsed.expires_at is not None:
        raise PayloadRejected("give ttl or expires_at, not both", given_id)
    if parsed.expires_at is not None and parsed.expires_at > now + MAX_TTL_S:
        # An expiry in the past is taken: the scheduler reports it expired, with an event.
        raise PayloadRejected(
            f"expires_at: is more than {MAX_TTL_S // 86400} days ahead (the longest ttl)",
            given_id,
        )
    ttl = parsed.ttl if parsed.ttl is not None else defaults.ttl_for(parsed.priority)
    interrupt = parsed.interrupt
    if interrupt is None:
        interrupt = parsed.priority >= INTERRUPTS_BY_DEFAULT_FROM
    return Announcement(
        id=parsed.id or new_id(),
        text=parsed.text,
        priority=parsed.priority,
        expires_at=parsed.expires_at if parsed.expires_at is not None else now + ttl,
        interrupt=interrupt,
        on_preempt=parsed.on_preempt,
        volume=parsed.volume,
        chime=parsed.chime,
        repeat=parsed.repeat,
        cache=parsed.cache,
    )


def _usable_id(value: object) -> str | None:
    """The payload's id if it is a valid one, for the event of a refused payload."""
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
        return value
    return None  # an invisible or huge id must not reach the log or the events


def _first_error(exc: ValidationError) -> str:
    # An unknown field is named first: it is usually a typo that also explains a missing one.
    err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    field = _shown(".".join(str(part) for part in err["loc"]) or "payload")
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field '{field}'"
    if kind == "missing":
        return f"{field}: is required"
    return f"{field}: {_shown(str(err['msg']).removeprefix('Value error, '), 200)}"


def _shown(text: str, limit: int = 40) -> str:
    """Text from a payload made fit for a one-line reason: escaped where not printable, short."""
    escaped = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "\u2026"
