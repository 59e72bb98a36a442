"""Rooms in sync, the logic: the agreement on one instant, proposals on the wire, the clock's
verdict, which topics are shared, and the synchroniser and the Speaker in process (no device)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.announcement import Announcement
from herald.clock import clock_state, describe
from herald.config import SyncConfig
from herald.events import Event
from herald.mqtt.topics import Topics
from herald.rooms import Agreed, Synchroniser
from herald.speaker import Delivery, Speaker
from herald.sync import (
    FORGET_AFTER_S,
    JOIN_LATE_MAX_S,
    PEERS_FORGOTTEN_AFTER_S,
    PROPOSALS_PER_KEY,
    REMEMBERED_KEYS,
    SETTLE_S,
    Agreement,
    ClockState,
    Proposal,
    announcement_key,
    clock_problem,
    parse_proposal,
)
from tests.fake_slng import RecordingSink
from tests.support import (
    RATE,
)
from tests.test_sound_output import Beep

NOW = 1_800_000_000.0

# --- the agreement --------------------------------------------------------------------------------


def test_the_same_message_has_the_same_key_on_every_node_and_another_has_another() -> None:
    key = announcement_key("herald/all/say", b"Dinner is ready")
    assert key == announcement_key("herald/all/say", b"Dinner is ready")
    assert key != announcement_key("herald/all/say", b"Dinner is ready!")
    assert key != announcement_key("herald/group/down/say", b"Dinner is ready")


def test_the_earliest_proposal_wins_and_a_node_ignores_its_own_echo() -> None:
    kitchen = Agreement("kitchen", lead_s=0.5)
    own = kitchen.propose("k.0", NOW)
    assert own == Proposal("k.0", round(NOW + 0.5, 6), "kitchen")
    assert not kitchen.hear(Proposal("k.0", NOW - 0.3, "kitchen"), NOW)  # its own, echoed
    assert kitchen.instant("k.0") == NOW + 0.5
    assert kitchen.hear(Proposal("k.0", NOW + 0.6, "hall"), NOW)  # later: changes nothing
    assert kitchen.instant("k.0") == NOW + 0.5
    assert kitchen.hear(Proposal("k.0", NOW + 0.48, "bedroom"), NOW)  # it got it first
    assert kitchen.instant("k.0") == NOW + 0.48
    assert kitchen.instant("other.0") is None  # never proposed


def test_a_proposal_heard_before_the_announcement_arrives_is_adopted() -> None:
    hall = Agreement("hall", lead_s=0.5)
    hall.hear(Proposal("k.0", NOW + 0.45, "kitchen"), NOW)
    hall.propose("k.0", NOW + 0.01)
    assert hall.instant("k.0") == NOW + 0.45


def test_a_room_far_behind_does_not_jump_into_the_middle() -> None:
    """Busy with something more urgent for 5 s: the others are long into it."""
    late = Agreement("late", lead_s=0.5)
    late.hear(Proposal("k.0", NOW + 0.5, "kitchen"), NOW)
    then = NOW + 5
    own = late.propose("k.0", then)
    assert late.instant("k.0") == own.at
    assert late.missed("k.0") and not late.joined("k.0")
    # ... but one that is only a little late joins them, a little way in.
    near = Agreement("near", lead_s=0.5)
    near.hear(Proposal("k.0", NOW + 0.5, "kitchen"), NOW)
    soon = NOW + 0.5 + JOIN_LATE_MAX_S / 2
    near.propose("k.0", soon)
    assert near.instant("k.0") == NOW + 0.5
    assert not near.missed("k.0") and near.joined("k.0")


def test_the_same_message_again_later_is_a_new_round_on_every_node() -> None:
    """A doorbell pressed twice, a minute apart, has one key; each press is agreed on its own,
    whatever each node did in between (reloaded, preempted, or dropped one)."""
    hall = Agreement("hall", lead_s=0.5)
    hall.hear(Proposal("bell", NOW + 0.5, "kitchen"), NOW)  # the first press, which the hall
    later = NOW + 60  # ... never began (quiet mode, a reload, anything)
    hall.hear(Proposal("bell", later + 0.5, "kitchen"), later)  # the second press
    own = hall.propose("bell", later + 0.02)
    assert hall.joined("bell") and not hall.missed("bell")
    assert hall.instant("bell") == later + 0.5 < own.at


def test_memory_stays_bounded_whatever_arrives() -> None:
    node = Agreement("kitchen", lead_s=0.5)
    for n in range(5 * REMEMBERED_KEYS):
        node.hear(Proposal(f"key{n}", NOW + 1, "hall"), NOW)
        node.propose(f"own{n}", NOW)
    for n in range(10 * PROPOSALS_PER_KEY):
        node.hear(Proposal("busy", NOW + 1 + n / 1000, f"room{n}"), NOW)
    assert len(node._heard) <= REMEMBERED_KEYS and len(node._own) <= REMEMBERED_KEYS
    assert all(len(times) <= PROPOSALS_PER_KEY for times in node._heard.values())
    assert node._heard["busy"][0] == NOW + 1  # the earliest are the ones kept
    # Nothing from long ago, and nothing for far ahead, is kept at all.
    assert not node.hear(Proposal("old", NOW - FORGET_AFTER_S - 1, "hall"), NOW)
    assert not node.hear(Proposal("ahead", NOW + 3600, "hall"), NOW)


@given(
    st.binary(max_size=300)
    | st.dictionaries(st.text(max_size=5), st.none()).map(lambda d: json.dumps(d).encode())
)
def test_anything_on_the_sync_topic_is_a_proposal_or_one_clear_reason(payload: bytes) -> None:
    try:
        proposal = parse_proposal(payload)
    except ValueError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert proposal.key and proposal.node and np.isfinite(proposal.at)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"key": "k", "at": NaN, "node": "n"}', "invalid JSON"),
        (b'{"key": "k", "at": true, "node": "n"}', "'at' must be"),
        (b'{"key": "", "at": 1, "node": "n"}', "'key' must be"),
        (b'{"key": "k", "at": 1}', "'node' must be"),
        (b"[1, 2]", "a JSON object"),
    ],
)
def test_a_bad_proposal_is_refused_saying_what_was_wrong(payload: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_proposal(payload)


def test_a_proposal_survives_the_wire() -> None:
    sent = Proposal("abc.1", NOW + 0.123456, "kitchen")
    assert parse_proposal(sent.to_json().encode()) == sent


# --- the clock ------------------------------------------------------------------------------------


def test_the_clock_is_trusted_only_when_synchronized_and_close_enough() -> None:
    max_error = 0.010
    assert clock_problem(None, max_error) == "the clock's synchronization cannot be read"
    assert "not synchronized" in (clock_problem(ClockState(False), max_error) or "")
    assert clock_problem(ClockState(True, 0.0004, 0.02), max_error) is None  # chrony on a LAN
    assert clock_problem(ClockState(True, None), max_error) is None  # timesyncd: no estimate
    too_far = clock_problem(ClockState(True, 0.030), max_error) or ""
    assert "30.0 ms" in too_far and "max_clock_error_ms" in too_far


def test_the_kernels_answer_is_read_as_the_ntp_clients_left_it() -> None:
    # adjtimex: TIME_OK with STA_PLL (chrony, synchronized, 350 us estimated).
    assert clock_state(0, 0x0001, 350, 20_000) == ClockState(True, 0.00035, 0.02)
    # TIME_ERROR with STA_UNSYNC (nothing has set the clock: as on this test machine).
    assert clock_state(5, 0x0040, 16_000_000, 16_000_000).synchronized is False
    # STA_UNSYNC alone also means unsynchronized; timesyncd's zero estimate means unknown.
    assert clock_state(0, 0x0041, 0, 0).synchronized is False
    assert clock_state(0, 0x0001, 0, 500).estimated_error_s is None
    assert describe(clock_state(0, 0x0001, 0, 500)) == (
        "synchronized (the NTP client gives no error estimate)"
    )


# --- topics ---------------------------------------------------------------------------------------


def test_a_room_list_reaches_the_rooms_it_names_and_only_shared_topics_are_synced() -> None:
    kitchen = Topics("herald", "kitchen", ("downstairs",))
    assert kitchen.is_say("herald/rooms/kitchen,hall/say")
    assert not kitchen.is_say("herald/rooms/hall,bedroom/say")
    assert not kitchen.is_say("herald/rooms/kitchen/extra/say")
    assert kitchen.is_shared("herald/rooms/kitchen,hall/say")
    assert not kitchen.is_shared("herald/rooms/kitchen/say")  # a list of one: itself
    assert not kitchen.is_shared("herald/rooms/kitchen,kitchen/say")
    assert kitchen.is_shared("herald/all/say")
    assert kitchen.is_shared("herald/group/downstairs/say")
    assert not kitchen.is_shared("herald/kitchen/say")
    assert "herald/rooms/+/say" in kitchen.subscriptions()
    assert "herald/sync" in kitchen.subscriptions()


# --- the synchroniser, in process -----------------------------------------------------------------


def shared(text: str = "Dinner is ready.") -> Announcement:
    return Announcement(id="dinner", text=text, sync_key=announcement_key("herald/all/say", b"x"))


def test_two_nodes_agree_on_the_instant_the_first_one_proposed() -> None:
    """The kitchen gets the message 40 ms before the hall: both start at the kitchen's time."""
    published: list[tuple[str, str]] = []
    nodes: dict[str, Synchroniser] = {}

    def wire(name: str) -> Callable[[str], None]:
        def publish(payload: str) -> None:
            published.append((name, payload))
            for other in nodes.values():  # the broker sends it to every node, the sender too
                other.heard(payload.encode())

        return publish

    cfg = SyncConfig(trust_clock=True)
    for name in ("kitchen", "hall"):
        nodes[name] = Synchroniser(cfg, name, wire(name))

    async def both() -> tuple[Agreed | None, Agreed | None]:
        first = asyncio.create_task(nodes["kitchen"].agree(shared()))
        await asyncio.sleep(0.04)
        second = asyncio.create_task(nodes["hall"].agree(shared()))
        return await first, await second

    kitchen, hall = asyncio.run(both())
    assert kitchen is not None and hall is not None
    assert kitchen.at is not None and kitchen.at == hall.at
    proposals = [parse_proposal(p.encode()) for _, p in published]
    assert [p.node for p in proposals] == ["kitchen", "hall"]
    assert kitchen.at == proposals[0].at < proposals[1].at
    assert hall.details() == {"synced": True, "sync_at": round(kitchen.at, 3)}


def test_an_unsynchronized_clock_starts_on_its_own_and_proposes_nothing() -> None:
    published: list[str] = []
    node = Synchroniser(SyncConfig(), "kitchen", published.append, clock=lambda: ClockState(False))
    agreed = asyncio.run(node.agree(shared()))
    assert agreed is not None and agreed.at is None
    assert "not synchronized" in str(agreed.details()["sync_reason"])
    assert published == []  # its proposal would put the other rooms' sound anywhere
    assert asyncio.run(node.agree(Announcement(id="own", text="Just here."))) is None


def test_the_speaker_places_a_shared_announcement_and_says_so_in_its_event() -> None:
    events: list[Event] = []
    sink = RecordingSink()
    node = Synchroniser(SyncConfig(trust_clock=True), "kitchen", lambda _: None)
    node.heard(Proposal("earlier.0", time.time() + 0.5, "hall").to_json().encode())  # a house
    delivery = Delivery(RATE, synchroniser=node)
    speaker = Speaker([Beep(0.2)], sink, events.append, delivery)
    before = time.monotonic()
    assert asyncio.run(speaker.speak(shared()))
    started = next(e for e in events if e.kind == "started")
    assert started.details["synced"] is True
    [placed] = sink.placed_at
    lead_s = SyncConfig().lead_ms / 1000
    assert before + lead_s - 0.05 < placed < time.monotonic() + lead_s  # about now + the lead


def test_a_speaker_that_never_hears_another_room_does_not_wait_for_nobody() -> None:
    """A house with one speaker that sends to `all`: after the short wait for proposals, it
    starts when ready. Once another room has been heard, it keeps waiting the lead."""
    solo = Agreement("kitchen", lead_s=0.5)
    solo.propose("k.0", NOW)
    assert not solo.joined("k.0") and solo.alone(NOW + SETTLE_S)
    solo.hear(Proposal("other.0", NOW + 0.5, "hall"), NOW)  # the hall exists
    solo.propose("k2.0", NOW + 60)
    assert not solo.alone(NOW + 60 + SETTLE_S)  # it may be a little late this time
    assert solo.alone(NOW + PEERS_FORGOTTEN_AFTER_S + 61)  # gone for a day

    async def agree_alone() -> Agreed | None:
        node = Synchroniser(SyncConfig(trust_clock=True), "kitchen", lambda _: None)
        return await node.agree(shared())

    agreed = asyncio.run(agree_alone())
    assert agreed is not None and agreed.details() == {
        "synced": False,
        "sync_reason": "no other speaker took part",
    }


def test_a_node_rebuilt_by_a_reload_still_agrees_with_the_others() -> None:
    """The review's case: the hall reloads (a new Synchroniser) between two presses of one
    doorbell; both presses are still agreed by both rooms."""
    clock = [NOW]
    nodes: dict[str, Synchroniser] = {}

    def broker(payload: str) -> None:  # every node hears every proposal, its own too
        for each in nodes.values():
            each.heard(payload.encode())

    def node(name: str) -> Synchroniser:
        return Synchroniser(SyncConfig(trust_clock=True), name, broker, now=lambda: clock[0])

    async def press() -> tuple[Agreed | None, Agreed | None]:
        kitchen = asyncio.create_task(nodes["kitchen"].agree(shared()))
        hall = asyncio.create_task(nodes["hall"].agree(shared()))
        return await kitchen, await hall

    nodes["kitchen"], nodes["hall"] = node("kitchen"), node("hall")
    first = asyncio.run(press())
    clock[0] += 60
    nodes["hall"] = node("hall")  # SIGHUP: everything it remembered is gone
    second = asyncio.run(press())
    for kitchen, hall in (first, second):
        assert kitchen is not None and hall is not None
        assert kitchen.at is not None and kitchen.at == hall.at
    assert second[0] is not None and second[0].at == round(NOW + 60 + 0.5, 6)
