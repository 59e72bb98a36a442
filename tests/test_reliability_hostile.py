"""A careless or hostile publisher against the real daemon, a real mosquitto and real alsa-lib.

Each test is something a tester did to Herald and what it cost then: a retained command acted on
at every restart, a stop signal lost in a burst, events dropped in a flood, no start on a state
directory that cannot be written.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.conftest import DaemonFactory
from tests.support import (
    NO_RATE_LIMIT,
    Broker,
    MqttProbe,
    fates,
    finished_or_failed,
    is_final,
    wait_for,
)


def test_retained_commands_are_not_commands(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    # Retained on a command topic, a message used to act again at every start, reload and
    # reconnection; the siren sounded for any retained payload at all.
    commands = {
        f"herald/{node_id}/say": json.dumps({"text": "Kept by the broker", "id": "retained"}),
        f"herald/{node_id}/siren/set": json.dumps({"state": "ON"}),
        f"herald/{node_id}/volume/set": "0.1",
    }
    for topic, payload in commands.items():
        probe.publish(topic, payload, retain=True)
    daemon = make_daemon(broker)
    try:
        daemon.start()
        probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Live", "id": "live"}))
        events = probe.events_until(finished_or_failed("live"))
    finally:
        for topic in commands:
            probe.publish(topic, "", retain=True)  # how a retained message is deleted
    assert {e["id"] for e in events} == {"live"}
    for topic in commands:
        assert any(f"ignored a retained message on {topic}" in line for line in daemon.log_lines)
    assert not any("volume 0.10" in line for line in daemon.log_lines)


def test_a_stop_signal_in_the_middle_of_a_burst_stops_the_daemon(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    # SIGTERM 0.5 s after thousands of messages used to be lost ("Exception ignored when trying
    # to write to the signal wakeup fd: BlockingIOError"); systemd then had to kill Herald.
    daemon = make_daemon(broker, mqtt=NO_RATE_LIMIT)
    daemon.start()
    say = f"herald/{node_id}/say"
    probe.publish_many((say, f"Message {n}.") for n in range(3000))
    time.sleep(0.5)
    assert daemon.process is not None
    asked = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0
    took = time.monotonic() - asked
    assert took < 15, f"took {took:.1f} s to stop"  # generous; the benchmark times it
    assert not any("wakeup fd" in line for line in daemon.log_lines)


def test_a_reload_signal_in_the_middle_of_a_burst_is_heard(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker, mqtt=NO_RATE_LIMIT)
    daemon.start()
    probe.publish_many((f"herald/{node_id}/say", f"Message {n}.") for n in range(3000))
    time.sleep(0.5)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log("configuration reloaded", timeout=30)


def test_a_flood_of_critical_announcements_loses_no_event(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    # Critical announcements are never rate-limited. A flood of them used to overflow the MQTT
    # client's queue: thousands of final events were dropped ("Message queue full").
    daemon = make_daemon(broker, extra="[queue]\nmax_length = 5\n")
    daemon.start()
    count = 2000
    ids = [f"c{n}" for n in range(count)]
    payloads = (json.dumps({"text": "Alarm.", "id": i, "priority": "critical"}) for i in ids)
    probe.publish_many((f"herald/{node_id}/say", payload) for payload in payloads)
    finals: set[str] = set()

    def all_settled(events: list[dict[str, object]]) -> bool:
        finals.update(str(e["id"]) for e in events[-1:] if is_final(e))
        return len(finals) == count

    events = probe.events_until(all_settled, timeout=240)
    settled = fates(events)
    assert set(settled) == set(ids)
    assert all(len(fate) == 1 for fate in settled.values())
    assert not any("Message queue full" in line for line in daemon.log_lines)


def test_a_state_directory_that_cannot_be_written_at_start_costs_a_line_not_the_start(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str, tmp_path: Path
) -> None:
    # A read-only or full state_dir: the journal's first write used to end the start with a
    # traceback, and systemd restarted Herald in a loop. (Root ignores a read-only mode, so the
    # write is made to fail by a directory where the journal's fresh copy goes.)
    (tmp_path / "state" / "queue.tmp").mkdir(parents=True)
    daemon = make_daemon(broker)
    daemon.start()
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Still here", "id": "ro"}))
    events = probe.events_until(finished_or_failed("ro"))
    assert events[-1]["event"] == "finished"
    errors = [line for line in daemon.log_lines if "journal: cannot write" in line]
    assert len(errors) == 1
    assert not any("Traceback" in line for line in daemon.log_lines)
    wait_for(lambda: daemon.alive, 1, "the daemon running")
