"""Rooms in sync, on the wire: proposals published and heard on `<base>/sync`, the clock checked.

The rules are in herald.sync (pure); this is where they meet the broker, the event loop and
the kernel's clock. The Speaker asks `agree()` before the first sound of an announcement that
reached several rooms, and places that sound at the instant it is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from herald.announcement import Announcement
from herald.clock import read_clock
from herald.config import SyncConfig
from herald.logsafe import shown
from herald.sync import (
    JOIN_LATE_MAX_S,
    SETTLE_S,
    Agreement,
    ClockState,
    clock_problem,
    parse_proposal,
)

log = logging.getLogger(__name__)

CLOCK_READ_EVERY_S = 30.0  # the kernel's clock state is read again after this long


@dataclass(frozen=True)
class Agreed:
    """The instant (Unix seconds) the first sound is heard in every room; or why this room
    starts on its own (`at` None)."""

    at: float | None
    reason: str | None = None

    def details(self) -> dict[str, object]:
        """For the `started` event."""
        if self.at is not None:
            return {"synced": True, "sync_at": round(self.at, 3)}
        return {"synced": False, "sync_reason": self.reason or ""}


class Synchroniser:
    def __init__(
        self,
        cfg: SyncConfig,
        node: str,
        publish: Callable[[str], None],
        clock: Callable[[], ClockState | None] = read_clock,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._agreement = Agreement(node, cfg.lead_ms / 1000)
        self._publish = publish
        self._read_clock = clock
        self._now = now
        self._clock_state: tuple[float, ClockState | None] | None = None  # (read at, state)
        self._refused_because: str | None = None  # the last clock problem, logged once

    def heard(self, payload: bytes) -> None:
        """A message on the sync topic (another node's proposal, or this node's own)."""
        try:
            proposal = parse_proposal(payload)
        except ValueError as exc:
            log.warning("ignored a message on the sync topic: %s", shown(str(exc), 200))
            return
        used = self._agreement.hear(proposal, self._now())
        log.debug(
            "%s %s's proposal for %s",
            "heard" if used else "ignored",
            shown(proposal.node),
            shown(proposal.key),
        )

    async def agree(self, announcement: Announcement) -> Agreed | None:
        """When this announcement's first sound is heard, agreed with the other rooms; None
        when it reached this room only (nothing to agree on)."""
        if announcement.sync_key is None:
            return None
        if not self._cfg.enabled:
            return Agreed(None, "sync is off (sync.enabled)")
        if (problem := self._clock_problem()) is not None:
            return Agreed(None, problem)
        key = announcement.sync_key
        proposal = self._agreement.propose(key, self._now())
        self._publish(proposal.to_json())
        await asyncio.sleep(SETTLE_S)  # the other rooms' proposals arrive meanwhile
        at = self._agreement.instant(key)
        assert at is not None  # proposed above
        if not self._agreement.joined(key):
            if self._agreement.missed(key):
                reason = f"the other rooms began it more than {JOIN_LATE_MAX_S:.0f} s earlier"
                return Agreed(None, reason)
            if self._agreement.alone(self._now()):
                return Agreed(None, "no other speaker took part")
        return Agreed(at)

    def _clock_problem(self) -> str | None:
        if self._cfg.trust_clock:
            return None
        now = time.monotonic()
        if self._clock_state is None or now - self._clock_state[0] > CLOCK_READ_EVERY_S:
            self._clock_state = (now, self._read_clock())
        problem = clock_problem(self._clock_state[1], self._cfg.max_clock_error_ms / 1000)
        if problem != self._refused_because:
            if problem is not None:
                log.warning("rooms in sync: not taking part: %s", problem)
            elif self._refused_because is not None:
                log.info("rooms in sync: the clock is good again")
            self._refused_because = problem
        return problem
