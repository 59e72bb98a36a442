"""The control topics' payloads (volume, quiet mode, the siren): exactly the documented values.

Pure parsing: each function returns what the payload asks for, or raises ValueError with one line
saying what was wrong. Nothing here is acted on before it has been parsed whole, so a careless
publisher can never set something by accident (an empty payload does not sound the siren).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from herald.payload_json import load_json

SIREN_TONES = ("alarm", "alert", "bell")
"""Tones the siren offers; each is one of Herald's built-in chimes."""
MAX_COMMAND_BYTES = 1024  # the longest documented command is a few dozen bytes


def parse_volume(payload: bytes) -> float:
    """A `volume/set` payload: a number 0.0-1.0 (a percentage 0-100 also works)."""
    word = _word(payload)
    try:
        value = float(word)
    except ValueError:
        raise ValueError(f"expected a number 0.0-1.0, got {word!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a number 0.0-1.0, got {word!r}")
    if 1.0 < value <= 100.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"volume {value:g} is outside 0.0-1.0")
    return value


def parse_switch(payload: bytes) -> bool:
    """`ON`/`OFF` (also true/false, 1/0; any case)."""
    word = _word(payload).lower()
    if word in ("on", "true", "1"):
        return True
    if word in ("off", "false", "0"):
        return False
    raise ValueError(f"expected ON or OFF, got {word!r}")


@dataclass(frozen=True)
class SirenCommand:
    """What Home Assistant's siren asks: on (with a tone and volume, when given) or off."""

    on: bool
    tone: str | None = None
    volume: float | None = None


def parse_siren(payload: bytes) -> SirenCommand:
    """A `siren/set` payload: Home Assistant's `{"state": "ON", "tone": ..., "volume_level": ...}`
    or `{"state": "OFF"}`; a bare `ON` or `OFF` also works."""
    word = _word(payload)
    if not word.startswith("{"):
        return SirenCommand(on=_siren_state(word))
    command = load_json(word)  # raises InvalidJson, a ValueError saying why
    if not isinstance(command, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(command) - {"state", "tone", "volume_level", "duration"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    if "state" not in command:
        raise ValueError('"state" is required: "ON" or "OFF"')
    on = _siren_state(command["state"])
    return SirenCommand(on=on, tone=_siren_tone(command.get("tone")), volume=_siren_volume(command))


def _siren_state(value: object) -> bool:
    if value in ("ON", "OFF"):
        return value == "ON"
    shown = value if isinstance(value, str) else json.dumps(value)
    raise ValueError(f'state must be "ON" or "OFF", got {shown[:40]!r}')


def _siren_tone(value: object) -> str | None:
    if value is None or (isinstance(value, str) and value in SIREN_TONES):
        return value
    raise ValueError(f"tone must be one of {', '.join(SIREN_TONES)}")


def _siren_volume(command: dict[str, object]) -> float | None:
    value = command.get("volume_level")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError("volume_level must be a number 0.0-1.0")
    return float(value)


def _word(payload: bytes) -> str:
    if len(payload) > MAX_COMMAND_BYTES:
        raise ValueError(f"payload is {len(payload)} bytes; commands are short")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8") from None
