"""The order in which announcements are spoken: a pure queue, no I/O and no clock.

Highest priority first; first in, first out within a priority. An id that is already waiting is
refused, so a publisher that retries (MQTT QoS 1 redelivery) is not heard twice.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from herald.announcement import Announcement


class DuplicateId(ValueError):
    """The id is already waiting in the queue."""


@dataclass(order=True)
class _Entry:
    sort_key: tuple[int, int]
    announcement: Announcement = field(compare=False)


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._waiting_ids: set[str] = set()
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def offer(self, announcement: Announcement) -> None:
        """Queue an announcement; raises DuplicateId when its id is already waiting."""
        if announcement.id in self._waiting_ids:
            raise DuplicateId(f"id {announcement.id!r} is already queued")
        # heapq pops the smallest key: negate the priority so the most urgent comes first,
        # and the arrival counter keeps equal priorities in arrival order.
        key = (-announcement.priority, next(self._arrivals))
        heapq.heappush(self._heap, _Entry(key, announcement))
        self._waiting_ids.add(announcement.id)

    def next(self) -> Announcement | None:
        """Take the announcement to speak now, or None when nothing waits."""
        if not self._heap:
            return None
        announcement = heapq.heappop(self._heap).announcement
        self._waiting_ids.discard(announcement.id)
        return announcement

    def clear(self) -> list[Announcement]:
        """Empty the queue and return what was in it, in the order it would have been spoken."""
        taken = [entry.announcement for entry in sorted(self._heap)]
        self._heap.clear()
        self._waiting_ids.clear()
        return taken
