"""Lifecycle events: what happened to an announcement, as published on `<base>/<node>/events`.

queued → started → finished, or rejected (never queued) / failed (could not be spoken).
Every accepted announcement ends in exactly one of finished or failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["queued", "started", "finished", "rejected", "failed"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    announcement_id: str | None
    ts: float = field(default_factory=time.time)
    details: dict[str, object] = field(default_factory=dict)

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
