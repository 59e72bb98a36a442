"""Rooms in sync: how the nodes that got one announcement agree on the instant it starts (pure).

An announcement sent to several rooms (`<base>/all/say`, a group, a room list) reaches every
node within a few milliseconds of the others. Each node that begins to speak it proposes an
instant, its own clock's "now + lead", on `<base>/sync`, and adopts the earliest proposal it
has heard for the same announcement a short, fixed time later: the node that got it first sets
the instant for all. Every node then places the first sample of the chime at that instant, on
its own clock (kept to true time by NTP), using its output's own delay.

The same announcement is known on every node by a key made of the topic and the payload's
bytes. Rooms that begin it together are one round: their proposals lie within JOIN_LATE_MAX_S
of each other. An earlier round of the same key (the same message sent before, or this one
spoken before a preemption and now again) is told apart by being older than that.

A node that hears no other room (for the announcement in hand, nor for a day) is alone: a house
with one speaker that sends to `all` does not wait the lead for nobody.

A proposal is taken only if it makes this node skip at most JOIN_LATE_MAX_S of the sound: a room
that comes to the announcement later (busy with something more urgent, or a late delivery) does
not jump into the middle of it; it says it on its own, from the start. The clock check decides
whether this node may take part at all: an unsynchronized clock would put its sound, and its
proposals, anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass

from herald.payload_json import load_json

JOIN_LATE_MAX_S = 2.0  # a room joins at most this far into a sound that has already started
SETTLE_S = 0.15  # how long after its own proposal a node waits for the others' (network jitter)
MAX_KEY_LENGTH = 64
MAX_NODE_LENGTH = 128
REMEMBERED_KEYS = 256  # announcements whose proposals are kept (a few seconds' worth is needed)
PROPOSALS_PER_KEY = 32  # per announcement: more rooms than any home has
FORGET_AFTER_S = 60.0  # proposals for an instant this long past are of no use any more
MAX_LEAD_S = 10.0  # a proposal further ahead than this is not a proposal for a live sound
# A node that has heard no other room on the sync topic for this long, and none for the
# announcement in hand, is taken to be alone: it starts when ready instead of waiting the lead.
PEERS_FORGOTTEN_AFTER_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Proposal:
    """One node's proposed start of one announcement, in Unix seconds (its clock)."""

    key: str
    at: float
    node: str

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "at": self.at, "node": self.node})


def announcement_key(topic: str, payload: bytes) -> str:
    """The same announcement's key on every node that got it: topic and payload digested."""
    digest = hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=12)
    return digest.hexdigest()


def parse_proposal(payload: bytes) -> Proposal:
    """A proposal from the sync topic; ValueError with a one-line reason for anything else."""
    value = load_json(payload)
    if not isinstance(value, dict):
        raise ValueError("a proposal is a JSON object")
    key, at, node = value.get("key"), value.get("at"), value.get("node")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"'key' must be a string of 1-{MAX_KEY_LENGTH} characters")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ValueError("'at' must be a number of Unix seconds")
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_LENGTH:
        raise ValueError(f"'node' must be a string of 1-{MAX_NODE_LENGTH} characters")
    return Proposal(key, float(at), node)


class Agreement:
    """The proposals this node made and heard, and the instant they agree on.

    Memory is bounded whatever arrives: REMEMBERED_KEYS announcements, PROPOSALS_PER_KEY
    proposals each (the earliest kept), nothing past FORGET_AFTER_S.
    """

    def __init__(self, node: str, lead_s: float) -> None:
        self.node = node
        self.lead_s = lead_s
        self._own: OrderedDict[str, Proposal] = OrderedDict()
        self._heard: OrderedDict[str, list[float]] = OrderedDict()
        self._peer_heard_at: float | None = None  # when another node last proposed anything

    def propose(self, key: str, now: float) -> Proposal:
        """This node's proposal for `key`: now + lead (kept, and to be published)."""
        # To the microsecond, as it goes on the wire: every node then holds the same number.
        proposal = Proposal(key, round(now + self.lead_s, 6), self.node)
        self._own[key] = proposal
        self._forget(now)
        return proposal

    def hear(self, proposal: Proposal, now: float) -> bool:
        """Another node's proposal; False when it is of no use (this node's own, long past, or
        too far ahead to be for a live sound)."""
        if proposal.node == self.node:
            return False
        if not now - FORGET_AFTER_S < proposal.at <= now + MAX_LEAD_S:
            return False
        self._peer_heard_at = now
        times = self._heard.setdefault(proposal.key, [])
        times.append(proposal.at)
        times.sort()
        del times[PROPOSALS_PER_KEY:]  # the earliest are what counts
        self._heard.move_to_end(proposal.key)
        self._forget(now)
        return True

    def instant(self, key: str) -> float | None:
        """The agreed start of `key`: the earliest proposal of this round, this node's own or
        one heard (see `_in_round`); None if this node made no proposal for it."""
        own = self._own.get(key)
        if own is None:
            return None
        return min([own.at, *self._in_round(key, own.at)])

    def _in_round(self, key: str, own_at: float) -> list[float]:
        """The proposals heard for `key` that belong with this node's own: made up to
        JOIN_LATE_MAX_S before it (joining them skips at most that much) or after it. Older
        ones are an earlier round: the same message before, or one this node came too late to."""
        return [at for at in self._heard.get(key, ()) if at >= own_at - JOIN_LATE_MAX_S]

    def joined(self, key: str) -> bool:
        """Another room proposed `key` in this node's round."""
        own = self._own.get(key)
        return own is not None and bool(self._in_round(key, own.at))

    def missed(self, key: str) -> bool:
        """No other room is in this round, but some began `key` earlier: too long ago to join."""
        own = self._own.get(key)
        if own is None or self.joined(key):
            return False
        return any(at < own.at - JOIN_LATE_MAX_S for at in self._heard.get(key, ()))

    def alone(self, now: float) -> bool:
        """No other room has been heard proposing anything for PEERS_FORGOTTEN_AFTER_S."""
        heard_at = self._peer_heard_at
        return heard_at is None or now - heard_at > PEERS_FORGOTTEN_AFTER_S

    def _forget(self, now: float) -> None:
        """Beyond REMEMBERED_KEYS the oldest go; and a few of the oldest each time, if stale."""
        stale = now - FORGET_AFTER_S
        while len(self._own) > REMEMBERED_KEYS:
            self._own.popitem(last=False)
        while len(self._heard) > REMEMBERED_KEYS:
            self._heard.popitem(last=False)
        for key in [k for k in list(self._own)[:8] if self._own[k].at < stale]:
            del self._own[key]
        for key in [k for k in list(self._heard)[:8] if self._heard[k][-1] < stale]:
            del self._heard[key]


# --- the clock ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockState:
    """What the kernel says of the system clock (adjtimex(2)): synchronized by an NTP client
    or not, and its estimated and maximum error in seconds (None: not known)."""

    synchronized: bool
    estimated_error_s: float | None = None
    maximum_error_s: float | None = None


def clock_problem(state: ClockState | None, max_error_s: float) -> str | None:
    """Why this clock cannot be trusted to place sound in step with other rooms; None if it
    can. Unknown is refused like unsynchronized."""
    if state is None:
        return "the clock's synchronization cannot be read"
    if not state.synchronized:
        return "the clock is not synchronized (no NTP client has set it: see docs/rooms.md)"
    error = state.estimated_error_s
    if error is not None and error > max_error_s:
        return (
            f"the clock's estimated error {error * 1000:.1f} ms is over "
            f"sync.max_clock_error_ms ({max_error_s * 1000:.1f} ms)"
        )
    return None
