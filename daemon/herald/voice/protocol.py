"""What every streaming-TTS protocol shares, with no I/O: failure kinds, text splitting, budgets.

A voice protocol sorts each way a socket can fail into one of a few kinds, because the kind, not
the detail, decides what Herald does next: retry at once, back off, or wait for minutes and say
that a person must fix something.
"""

from __future__ import annotations

import enum
from collections import deque
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


class SlidingBudget:
    """A limit on what is sent per sliding window (characters per minute, Flushes per minute).

    Pure: the caller passes the time in. `delay(n, now)` says how long to wait before n more
    units fit; `spend(n, now)` records them. Waiting instead of sending keeps a server from
    closing the socket for going over its limit.
    """

    # The server stamps text when it arrives, a network delay after we stamp it, and jitter can
    # shorten the gap between two sends on its clock: wait this much longer than the window asks.
    MARGIN_S = 1.0

    def __init__(self, per_window: int, window_s: float = 60.0) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._spent: deque[tuple[float, int]] = deque()
        self._total = 0  # of what is in _spent: a flood is checked in O(1), not O(window)

    def used(self, now: float) -> int:
        while self._spent and self._spent[0][0] <= now - self.window_s:
            self._total -= self._spent.popleft()[1]
        return self._total

    def delay(self, count: int, now: float) -> float:
        if count > self.per_window:
            raise ValueError(f"{count} can never fit a budget of {self.per_window}")
        excess = self.used(now) + count - self.per_window
        if excess <= 0:
            return 0.0
        freed = 0
        for at, spent in self._spent:
            freed += spent
            if freed >= excess:
                return at + self.window_s - now + self.MARGIN_S
        raise AssertionError("unreachable: count <= per_window frees enough")

    def spend(self, count: int, now: float) -> None:
        self._spent.append((now, count))
        self._total += count
