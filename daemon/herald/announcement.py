"""What may be announced: the Announcement model and the parsing of MQTT payloads into it.

A payload is plain UTF-8 text, or a JSON object when it starts with `{`. Every way a payload can
be wrong raises PayloadRejected with a one-line reason that names what was wrong.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PRIORITY_LEVELS: dict[str, int] = {"low": 20, "normal": 50, "high": 80, "critical": 100}
DEFAULT_PRIORITY = PRIORITY_LEVELS["normal"]
MAX_ID_LENGTH = 128


class PayloadRejected(ValueError):
    """A payload that cannot be announced. `announcement_id` is set when the payload named one."""

    def __init__(self, reason: str, announcement_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.announcement_id = announcement_id


@dataclass(frozen=True, slots=True)
class Announcement:
    id: str
    text: str
    priority: int = DEFAULT_PRIORITY

    @property
    def priority_name(self) -> str:
        """The level's name when the priority is exactly one, else the number."""
        for name, value in PRIORITY_LEVELS.items():
            if value == self.priority:
                return name
        return str(self.priority)


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


class _JsonPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    priority: Any = DEFAULT_PRIORITY

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        if _has_control_characters(value):
            raise ValueError("contains control characters")
        return value.strip()

    @field_validator("id")
    @classmethod
    def _id_printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @field_validator("priority")
    @classmethod
    def _priority_known(cls, value: object) -> int:
        return parse_priority(value)


def parse_payload(payload: bytes, max_bytes: int) -> Announcement:
    """Turn one MQTT payload into an Announcement, or raise PayloadRejected saying why."""
    if len(payload) > max_bytes:
        raise PayloadRejected(f"payload is {len(payload)} bytes, over the {max_bytes}-byte limit")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise PayloadRejected(f"payload is not UTF-8 (bad byte at offset {exc.start})") from None
    if not text:
        raise PayloadRejected("empty payload")
    if text.startswith("{"):
        return _parse_json(text)
    if _has_control_characters(text):
        raise PayloadRejected("text contains control characters")
    return Announcement(id=new_id(), text=text)


def _has_control_characters(text: str) -> bool:
    return any(not (ch.isprintable() or ch in "\n\r\t") for ch in text)


def _parse_json(text: str) -> Announcement:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadRejected(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise PayloadRejected("invalid JSON: expected an object")
    raw_id = data.get("id")
    given_id = raw_id if isinstance(raw_id, str) and raw_id else None
    try:
        parsed = _JsonPayload.model_validate(data)
    except ValidationError as exc:
        raise PayloadRejected(_first_error(exc), given_id) from None
    return Announcement(id=parsed.id or new_id(), text=parsed.text, priority=parsed.priority)


def _first_error(exc: ValidationError) -> str:
    # An unknown field is named first: it is usually a typo that also explains a missing one.
    err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    field = ".".join(str(part) for part in err["loc"]) or "payload"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field '{field}'"
    if kind == "missing":
        return f"{field}: is required"
    return f"{field}: {str(err['msg']).removeprefix('Value error, ')}"
