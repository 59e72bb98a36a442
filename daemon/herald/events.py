"""Lifecycle events: what happened to an announcement, as published on `<base>/<node>/events`.

queued → started → finished; or rejected (never queued); or failed, preempted (cut off by a
more urgent one: requeued, or dropped), expired, dropped (evicted from a full queue, cleared,
stopped). Every accepted announcement ends in exactly one of finished, failed, expired, dropped
or a preempted event with requeued = false.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from herald.announcement import Announcement
from herald.scheduler import Dropped, Evicted, Expired, Outcome, Preempted, Queued, Rejected

EventKind = Literal[
    "queued", "started", "finished", "rejected", "failed", "preempted", "expired", "dropped"
]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    announcement_id: str | None
    ts: float = field(default_factory=time.time)
    details: dict[str, object] = field(default_factory=dict)
    # The announcement it tells of, for those who follow the events inside Herald: the journal
    # keeps a queued one, the status shows the last one's words. Never published (the events
    # topic carries ids, not what was said).
    announcement: Announcement | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        """The announcement's words ("" for an event of no announcement's)."""
        return "" if self.announcement is None else self.announcement.text

    @property
    def settles(self) -> bool:
        """It tells an accepted announcement's fate: nothing more will happen to it. (A
        `rejected` one was never accepted, though it may carry the id of one that was.)"""
        if self.kind == "preempted":
            return self.details.get("requeued") is False
        return self.kind in ("finished", "failed", "expired", "dropped")

    def to_dict(self) -> dict[str, object]:
        return {
            "event": self.kind,
            "id": self.announcement_id,
            "ts": round(self.ts, 3),
            **self.details,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


EventSink = Callable[[Event], None]


def event_for(outcome: Outcome) -> Event | None:
    """The event that tells the world about a Scheduler outcome (None for instructions)."""
    if isinstance(outcome, Queued):
        a = outcome.announcement
        return about(
            a, "queued", {"priority": a.priority_name, "queue_length": outcome.queue_length}
        )
    if isinstance(outcome, Rejected):
        return about(outcome.announcement, "rejected", {"reason": outcome.reason})
    if isinstance(outcome, Expired):
        reason = "its time to live ran out before it was spoken"
        return about(outcome.announcement, "expired", {"reason": reason})
    if isinstance(outcome, Evicted):
        reason = f"queue full: evicted for {outcome.by}"
        return about(outcome.announcement, "dropped", {"reason": reason})
    if isinstance(outcome, Dropped):
        return about(outcome.announcement, "dropped", {"reason": outcome.reason})
    if isinstance(outcome, Preempted):
        details = {"by": outcome.by, "requeued": outcome.requeued}
        return about(outcome.announcement, "preempted", details)
    return None


def about(announcement: Announcement, kind: EventKind, details: dict[str, object]) -> Event:
    """An event of this announcement's (carrying it, for the journal and the status, and where
    it came from when that was not MQTT)."""
    if announcement.source is not None:
        details = {**details, "source": announcement.source}
    return Event(kind, announcement.id, details=details, announcement=announcement)
