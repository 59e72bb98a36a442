"""What every streaming-TTS protocol shares, with no I/O: failure kinds and text splitting.

A voice protocol sorts each way a socket can fail into one of a few kinds, because the kind, not
the detail, decides what Herald does next: retry at once, back off, or wait for minutes and say
that a person must fix something.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from herald.text import sentences


class FailureKind(enum.Enum):
    CONFIG = "config error"  # a setting is wrong (model, rate, message name): a person must fix it
    AUTH = "auth error"  # the key is wrong or lacks permission: a person must fix it
    RATE_LIMITED = "rate-limited"  # too many sockets or characters: back off with jitter
    TRANSIENT = "transient"  # network or server trouble: reconnect with backoff
    LIFETIME = "lifetime"  # the server's age limit: Herald should have rotated before it
    IDLE = "idle"  # closed because no client message came in time: not a failure, replace it

    @property
    def needs_a_person(self) -> bool:
        return self in (FailureKind.CONFIG, FailureKind.AUTH)


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


def split_text(text: str, limit: int) -> list[str]:
    """Cut text into pieces of at most `limit` characters: at sentence ends, else at spaces.

    A single word longer than the limit is cut where the limit falls.
    Joining the pieces with single spaces gives back the text with its whitespace runs folded.
    """
    pieces: list[str] = []
    current = ""
    for unit in _units(text, limit):
        candidate = f"{current} {unit}" if current else unit
        if len(candidate) <= limit:
            current = candidate
        else:
            pieces.append(current)
            current = unit
    if current:
        pieces.append(current)
    return pieces


def _units(text: str, limit: int) -> list[str]:
    """Sentences; a sentence over the limit becomes words; a word over it becomes slices."""
    units: list[str] = []
    for sentence in sentences(text):
        if len(sentence) <= limit:
            units.append(sentence)
            continue
        for word in sentence.split(" "):
            units.extend(word[i : i + limit] for i in range(0, len(word), limit))
    return [unit for unit in units if unit]
