"""The reliability suite, MQTT side: faults injected around the real daemon.

Each test breaks something a real installation meets (the broker restarting, Herald killed with a
full queue, a flood of messages) and then checks the two promises: every accepted announcement
ends with exactly one event that says what became of it, and the daemon is healthy afterwards.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from herald.announcement import Announcement
from herald.journal import QueueJournal
from tests.conftest import DaemonFactory
from tests.support import (
    NO_RATE_LIMIT,
    Broker,
    Capture,
    DaemonProcess,
    Events,
    MqttProbe,
    PulseServer,
    contains_speech,
    distinct,
    fates,
    got,
    rss_kib,
    settled,
    wait_for,
)


def collect(
    probe: MqttProbe, events: Events, done: Callable[[Events], bool], timeout: float = 30
) -> None:
    """Add events to `events` until done(all of them) holds."""
    events += probe.events_until(lambda new: done(events + new), timeout)


def assert_one_fate_each(events: Events, ids: Iterable[str]) -> dict[str, str]:
    """Every id has exactly one final event, and nothing else was settled: returns id → fate."""
    found = fates(events)
    doubled = {ident: fate for ident, fate in found.items() if len(fate) > 1}
    assert not doubled, f"more than one fate: {doubled}"
    missing = set(ids) - found.keys()
    assert not missing, f"no event for {sorted(missing)}"
    return {ident: fate[0] for ident, fate in found.items()}


def assert_healthy(
    daemon: DaemonProcess, probe: MqttProbe, node_id: str, topic: str = "say"
) -> dict[str, Any]:
    """Alive, answering, speaking: a fresh announcement is spoken to the end."""
    assert daemon.alive, "daemon exited:\n" + "\n".join(daemon.log_lines)
    ident = f"health-{uuid.uuid4().hex[:6]}"
    say = {"text": "Still here.", "id": ident, "chime": False}
    probe.publish(f"herald/{node_id}/{topic}" if topic == "say" else topic, json.dumps(say))
    events = probe.events_until(settled([ident]), timeout=60)
    last = events[-1]
    assert (last["id"], last["event"]) == (ident, "finished"), last
    assert not [line for line in daemon.log_lines if "Traceback" in line], daemon.log_lines
    return last


def say(probe: MqttProbe, node_id: str, ident: str, text: str, **fields: Any) -> None:
    payload = {"text": text, "id": ident, "chime": False, **fields}
    probe.publish(f"herald/{node_id}/say", json.dumps(payload))


def subscribed(daemon: DaemonProcess, times: int) -> Callable[[], bool]:
    """The daemon has (re)subscribed this many times since it started."""
    return lambda: sum("subscribed to" in line for line in daemon.log_lines) >= times


# --- the broker restarts, five times --------------------------------------------------------------

RESTARTS = 5


@pytest.mark.timeout(300)
def test_five_broker_restarts_while_speaking_lose_nothing(
    tmp_path: Path, make_daemon: DaemonFactory, node_id: str, pulse: PulseServer
) -> None:
    """Speech goes on while the broker is away; the events of that time arrive afterwards."""
    broker = Broker(tmp_path, persistent=True)  # a restart keeps sessions, as mosquitto's does
    broker.start()
    probe = MqttProbe(broker, f"herald/{node_id}/events", persistent=True)
    try:
        daemon = make_daemon(broker, device="herald_paced")  # real time: speech outlasts restarts
        daemon.start(wait_until="herald: ready")
        ids: list[str] = []
        events: Events = []
        for cycle in range(1, RESTARTS + 1):
            first, second = f"r{cycle}a", f"r{cycle}b"
            say(probe, node_id, first, f"Cycle {cycle}: spoken while the broker goes away.")
            say(probe, node_id, second, f"Cycle {cycle}: waiting while the broker is away.")
            ids += [first, second]
            collect(probe, events, got("started", first))
            broker.stop()
            time.sleep(1.0)  # Herald speaks on without a broker; its events wait
            broker.start()
            wait_for(lambda: probe.connected, 15, "the probe to reconnect")
            wait_for(subscribed(daemon, cycle + 1), 30, f"Herald back after restart {cycle}")
        collect(probe, events, settled(ids), timeout=120)
        fate = assert_one_fate_each(events, ids)
        assert set(fate.values()) == {"finished"}, fate
        # An event whose acknowledgement the restart cut off is sent again, `ts` and all: one
        # event delivered twice (MQTT's at-least-once). Two with different times would be two.
        queued = Counter(e["id"] for e in distinct(events) if e["event"] == "queued")
        assert all(queued[i] == 1 for i in ids), queued  # no redelivery queued twice
        lost = sum("lost the connection" in line for line in daemon.log_lines)
        assert lost == RESTARTS, lost
        assert_healthy(daemon, probe, node_id)
    finally:
        probe.close()
        broker.stop()


# --- SIGKILL with a full queue -------------------------------------------------------------------

QUEUE_LENGTH = 100  # the shipped default
OVERFLOW = 20


@pytest.mark.timeout(300)
def test_sigkill_with_a_full_queue_loses_nothing(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    pulse: PulseServer,
    capture: Capture,
) -> None:
    """Killed mid-sentence with the queue full and overflowing: after the restart the one cut
    short is spoken again, the queue follows in priority order, the overflow was reported."""
    paced = make_daemon(
        broker, f"[queue]\nmax_length = {QUEUE_LENGTH}\n", device="herald_paced", mqtt=NO_RATE_LIMIT
    )
    paced.start(wait_until="herald: ready")
    long_text = "This one is cut short by a crash and must be spoken again from its start."
    say(probe, node_id, "speaking", long_text, priority="critical")
    probe.events_until(got("started", "speaking"))
    rng = random.Random(8)
    waiting = [f"q{n:03d}" for n in range(QUEUE_LENGTH + OVERFLOW)]
    priority_of = {ident: rng.choice(["low", "normal"]) for ident in waiting}
    for ident in waiting:  # below high: none interrupts the one speaking
        say(probe, node_id, ident, f"Queued {ident}.", priority=priority_of[ident], ttl=600)
    events: Events = []
    collect(
        probe,
        events,
        lambda ev: sum(e["event"] in ("queued", "dropped") for e in ev) >= len(waiting) + OVERFLOW,
    )
    assert not got("finished", "speaking")(events), "the crash must come mid-sentence"
    assert paced.process is not None
    paced.process.send_signal(signal.SIGKILL)
    paced.process.wait(5)

    fast = make_daemon(broker)  # the same node and journal; a device that plays at once
    fast.start(wait_until="herald: ready")
    everyone = ["speaking", *waiting]
    restarted_at = len(events)
    collect(probe, events, settled(everyone), timeout=180)
    after = events[restarted_at:]
    fate = assert_one_fate_each(events, everyone)

    # The overflow evicted the least urgent, oldest first; the crash itself cost nothing.
    dropped = sorted(i for i, f in fate.items() if f == "dropped")
    assert dropped == [i for i in waiting if priority_of[i] == "low"][:OVERFLOW], fate
    finished = [e["id"] for e in after if e["event"] == "finished"]
    assert finished[0] == "speaking"  # cut short: spoken again, first
    kept = [i for i in waiting if i not in dropped]
    by_priority = sorted(kept, key=lambda i: (priority_of[i] == "low", waiting.index(i)))
    assert finished[1:] == by_priority
    replayed = sum("from the journal" in line for line in fast.log_lines)
    assert replayed == len(kept) + 1, replayed
    assert contains_speech(capture.samples())
    assert_healthy(fast, probe, node_id)


def test_a_crash_between_the_journal_and_the_ack_speaks_it_once(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str, tmp_path: Path
) -> None:
    """Killed after journaling a message but before acknowledging it: the journal restores it
    and the broker delivers it again. It is spoken once, with one set of events."""
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")  # its session now exists on the broker
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(5)
    payload = {"text": "Said once.", "id": "twice", "chime": False}
    probe.publish(f"herald/{node_id}/say", json.dumps(payload))  # unacknowledged: kept for it
    QueueJournal(tmp_path / "state" / "queue.journal").add(  # what the journal had kept
        Announcement("twice", "Said once.", expires_at=time.time() + 600, chime=False)
    )
    daemon.start(wait_until="herald: ready")
    events: Events = []
    collect(probe, events, settled(["twice"]))
    time.sleep(1.0)  # a second set of events would come now
    events += drain(probe)
    assert [e["event"] for e in events] == ["queued", "started", "finished"], events
    wait_for(lambda: any("a redelivery" in x for x in daemon.log_lines), 5, "the log line")


@pytest.mark.timeout(120)
def test_a_final_event_the_broker_never_got_is_sent_after_a_crash(
    tmp_path: Path, make_daemon: DaemonFactory, node_id: str, pulse: PulseServer
) -> None:
    """It finished while the broker was away, and Herald was killed before the broker came
    back: its `finished` event was only in the MQTT client's memory. The journal sends it."""
    broker = Broker(tmp_path, persistent=True)
    broker.start()
    probe = MqttProbe(broker, f"herald/{node_id}/events", persistent=True)
    try:
        daemon = make_daemon(broker, device="herald_paced")  # real time: it outlasts the stop
        daemon.start(wait_until="herald: ready")
        say(probe, node_id, "unheard", "Finished while the broker is away, then a crash.")
        events: Events = []
        collect(probe, events, got("started", "unheard"))
        broker.stop()
        daemon.wait_for_log("finished unheard", timeout=30)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(5)
        killed_at = time.time()
        broker.start()
        daemon.start(wait_until="herald: ready")
        collect(probe, events, settled(["unheard"]))
        time.sleep(1.0)  # a second copy would come now
        events += drain(probe)
        finished = [e for e in events if e["event"] == "finished"]
        assert [e["id"] for e in finished] == ["unheard"], events
        assert finished[0]["ts"] < killed_at  # the event of before the crash, sent again
        assert any("sending 1 final events again" in x for x in daemon.log_lines)
        assert_healthy(daemon, probe, node_id)
        # The broker acknowledged it this time: the next start has nothing to send again.
        daemon.stop()
        daemon.start(wait_until="herald: ready")
        assert not any("final events again" in x for x in daemon.log_lines)
    finally:
        probe.close()
        broker.stop()


def drain(probe: MqttProbe) -> Events:
    """What the probe has received and nobody read yet."""
    found: Events = []
    while not probe.messages.empty():
        found.append(probe.next_json(0))
    return found


# --- a flood of 5,000 messages ------------------------------------------------------------------

BURST = 5000


@pytest.mark.timeout(600)
@pytest.mark.parametrize("limits", ["shipped rate limit", "no rate limit"])
def test_a_burst_of_five_thousand_keeps_memory_bounded_and_a_critical_one_cuts_in(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    pulse: PulseServer,
    limits: str,
) -> None:
    """A runaway automation floods the speaker; the smoke alarm after it still cuts in. With the
    shipped rate limit most of the flood is turned away at once; without, the queue takes it."""
    mqtt = NO_RATE_LIMIT if limits == "no rate limit" else ""
    daemon = make_daemon(broker, device="herald_paced", mqtt=mqtt)
    daemon.start(wait_until="herald: ready")
    before = rss_kib(daemon)
    rng = random.Random(5000)
    ids = [f"b{n:04d}" for n in range(BURST)]
    for ident in ids:
        priority = rng.choice(["low", "normal", "high"])
        say(probe, node_id, ident, f"Burst {ident}.", priority=priority)
    published = time.monotonic()
    say(probe, node_id, "fire", "Smoke in the kitchen.", priority="critical")
    events: Events = []
    collect(probe, events, got("started", "fire"), timeout=120)
    cut_in_s = time.monotonic() - published
    during = rss_kib(daemon)
    preempted = [e for e in events if e["event"] == "preempted" and e["by"] == "fire"]
    # Something was speaking when the alarm came, and the alarm interrupted it.
    assert len(preempted) == 1, [e for e in events if e["event"] == "preempted"][-3:]
    assert cut_in_s < 30, cut_in_s  # behind 5,000 messages in the broker's pipe
    print(f"\ncritical started {cut_in_s * 1000:.0f} ms after its publish, behind {BURST}")

    probe.publish(f"herald/{node_id}/clear", "")  # the rest of the flood is not wanted
    collect(probe, events, settled([*ids, "fire"]), timeout=180)
    fate = assert_one_fate_each(events, [*ids, "fire"])
    assert fate["fire"] == "finished"
    counts = Counter(fate[i] for i in ids)
    assert counts["finished"] < 20 and counts["rejected"] > 0, counts
    reasons = Counter(
        f"{e['event']}: {e['reason'].split(' (')[0].split(':')[0]}"
        for e in events
        if e["event"] in ("dropped", "rejected")
    )
    if limits == "no rate limit":  # the full queue turned the least urgent away, evicted for
        # more urgent ones, and was then cleared
        expected = {"rejected: queue full", "dropped: queue full", "dropped: cleared"}
    else:  # the first few were queued, the rest turned away at the door
        expected = {"rejected: rate limit", "dropped: cleared"}
    assert reasons.keys() == expected, reasons
    first = min(e["ts"] for e in events if e.get("id") in ("b0000",))
    last = max(e["ts"] for e in events if e.get("id") == "b4999")
    print(f"fates of the {BURST}: {dict(counts)}; {dict(reasons)}; taken in {last - first:.1f} s")
    grown_mib = (max(during, rss_kib(daemon)) - before) / 1024
    print(f"RSS {before / 1024:.1f} MiB before, grew {grown_mib:.1f} MiB")
    assert grown_mib < 40, grown_mib
    assert_healthy(daemon, probe, node_id, "herald/all/say")  # the flood's topic is limited now
