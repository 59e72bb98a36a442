"""A limit on what may be sent per sliding window: pure, the caller passes the time in.

Used for the rate limit on announcements per MQTT topic (the Dispatcher) and for what a voice
sends its server (characters and Flushes per minute, the Deepgram voice).
"""

from __future__ import annotations

from collections import deque


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
