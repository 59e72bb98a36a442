"""End to end: the real daemon process, a real mosquitto, real alsa-lib writing to a file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from herald.audio.chimes import load_chime
from herald.audio.meter import measure
from tests.conftest import DaemonFactory
from tests.support import (
    Broker,
    Capture,
    MqttProbe,
    PulseServer,
    contains_speech,
    espeak_reference,
    finished_or_failed,
    heard_chime,
    mpd_command,
    mpd_volume,
    similarity,
    wait_for,
)


def test_published_text_is_spoken_with_its_events(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str, capture: Capture
) -> None:
    with_daemon = make_daemon(broker)
    with_daemon.start()
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Hello from Herald", "id": "a1"}))

    events = probe.events_until(finished_or_failed("a1"))

    assert [e["event"] for e in events] == ["queued", "started", "finished"]
    assert all(e["id"] == "a1" and isinstance(e["ts"], float) for e in events)
    assert events[0]["ts"] <= events[1]["ts"] <= events[2]["ts"]
    assert events[1]["voice"] == "espeak"
    played = capture.samples()
    chime = heard_chime("soft")  # the chime of a normal announcement comes first, levelled
    assert np.array_equal(played[: len(chime)], chime)
    speech = played[len(load_chime("soft", 48000)) :]
    assert contains_speech(speech)
    reference = espeak_reference("Hello from Herald")
    # espeak-ng's speech reached ALSA, brought to -18 LUFS: the same sound, louder, its peaks
    # limited; then the tail's 150 ms of silence, padded to a whole period at most.
    tail = 48000 * 150 // 1000
    assert 0 <= len(speech) - len(reference) - tail < 960 + 64
    assert similarity(speech, reference) > 0.99
    assert not speech[len(reference) :].any()
    heard = measure(speech, 48000)
    assert heard.lufs == pytest.approx(-18.0, abs=1.5)
    assert (heard.true_peak_dbtp or 0) <= -1.0
    assert events[2]["duration_s"] == pytest.approx(len(reference) / 48000, abs=0.03)


def test_the_daemon_switches_the_amplifier_and_learns_its_voices_loudness(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    tmp_path: Path,
) -> None:
    """[amp] from the config: on before the first sound, off at the stop; what espeak-ng
    measured is kept in state_dir for the next start."""
    switched = tmp_path / "amp.log"
    script = 'echo "$1" >> "$0"'
    amp = (
        f'[amp]\non_command = ["sh", "-c", {json.dumps(script)}, "{switched}", "on"]\n'
        f'off_command = ["sh", "-c", {json.dumps(script)}, "{switched}", "off"]\nwarmup_ms = 100\n'
    )
    daemon = make_daemon(broker, amp)
    daemon.start()
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Amplifier test.", "id": "amp"}))
    probe.events_until(finished_or_failed("amp"))
    assert switched.read_text().split() == ["on"]
    assert daemon.stop() == 0
    assert switched.read_text().split() == ["on", "off"]
    kept = json.loads((tmp_path / "state" / "loudness.json").read_text())["voices"]
    ((identity, espeak),) = kept.items()
    assert identity.startswith("espeak: en-us") and espeak["heard"] == 1
    assert -30 < espeak["lufs"] < -12


def test_the_daemon_puts_back_what_a_crash_left_ducked_and_ducks_its_announcements(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str, tmp_path: Path,
    mpd: str, pulse: PulseServer,
) -> None:  # fmt: skip
    """[ducking] from the config: an MPD a killed Herald left at 7 is put back to 70 at the
    start; an announcement lowers it and puts it back."""
    state = tmp_path / "state"
    state.mkdir()
    port = int(mpd.rpartition(":")[2])
    mpd_command(port, "setvol 7")
    lowered = {"backend": "mpd", "address": mpd, "before": 70, "set": 7}
    (state / "ducked.json").write_text(json.dumps({"lowered": [lowered]}))
    daemon = make_daemon(
        broker, f'[ducking]\nenabled = true\nmpd = "{mpd}"\n', device="herald_paced"
    )
    daemon.start()
    assert mpd_volume(mpd) == 70 and not (state / "ducked.json").exists()
    text = "The music is lowered while this is said, and comes back afterwards."
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": text, "id": "duck"}))
    probe.events_until(lambda events: any(e["event"] == "started" for e in events))
    assert mpd_volume(mpd) == 7  # down while it speaks (it is a few seconds long)
    probe.events_until(finished_or_failed("duck"))
    wait_for(lambda: mpd_volume(mpd) == 70, 10, "the music back")


def test_plain_text_and_the_all_topic_are_spoken_in_arrival_order(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    make_daemon(broker).start()
    probe.publish(f"herald/{node_id}/say", "First message.")
    probe.publish("herald/all/say", json.dumps({"text": "Second message.", "id": "second"}))
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Third message.", "id": "third"}))

    events = probe.events_until(finished_or_failed("third"))

    starts = [e["id"] for e in events if e["event"] == "started"]
    assert len(starts) == 3
    assert starts[1:] == ["second", "third"]
    assert [e["event"] for e in events].count("finished") == 3


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"   ", "empty payload"),
        (b"\xff\xfe hello", "not UTF-8"),
        (b'{"text": "unterminated', "invalid JSON"),
        (b'{"txt": "typo"}', "unknown field 'txt'"),
        (b'{"text": ""}', "text: is empty"),
        (b'{"text": "hi", "priority": "urgent"}', "priority: must be"),
        (b"x" * 16385, "over the 16384-byte limit"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason_and_the_daemon_lives_on(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    payload: bytes,
    reason: str,
) -> None:
    daemon = make_daemon(broker)
    daemon.start()
    probe.publish(f"herald/{node_id}/say", payload)
    rejected = probe.next_json()
    assert rejected["event"] == "rejected"
    assert reason in rejected["reason"]

    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Still here.", "id": "after"}))
    events = probe.events_until(finished_or_failed("after"))
    assert events[-1]["event"] == "finished"
    assert daemon.alive


def test_rejected_json_keeps_the_given_id(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    make_daemon(broker).start()
    probe.publish(
        f"herald/{node_id}/say", json.dumps({"id": "mine", "text": "x", "voice": "Brian"})
    )
    rejected = probe.next_json()
    assert rejected == {**rejected, "event": "rejected", "id": "mine"}
    assert rejected["reason"] == "unknown field 'voice'"


def test_a_retried_publish_is_heard_once_and_a_reused_id_is_rejected(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    make_daemon(broker).start(wait_until="herald: ready")
    probe.publish(f"herald/{node_id}/quiet/set", "ON")  # hold it, so the retry finds it waiting
    first = {"id": "door", "text": "Someone is at the door.", "chime": False}
    for payload in (first, first, {**first, "text": "Something else."}):
        probe.publish(f"herald/{node_id}/say", json.dumps(payload))
    probe.publish(f"herald/{node_id}/quiet/set", "OFF")
    events = probe.events_until(lambda ev: [e["event"] for e in ev][-1:] == ["finished"])
    assert [e["event"] for e in events] == ["queued", "rejected", "started", "finished"]
    assert events[1]["reason"] == "id 'door' is already queued or speaking"


def test_daemon_reconnects_and_resubscribes_after_the_broker_restarts(
    own_broker: Broker, make_daemon: DaemonFactory, node_id: str, capture: Capture
) -> None:
    daemon = make_daemon(own_broker)
    daemon.start()
    own_broker.stop()
    daemon.wait_for_log("lost the connection")
    own_broker.start()
    daemon.wait_for_log("subscribed to", timeout=30)
    wait_for(lambda: sum("subscribed to" in line for line in daemon.log_lines) >= 2, 30, "resub")

    probe = MqttProbe(own_broker, f"herald/{node_id}/events")
    try:
        probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Back again.", "id": "back"}))
        events = probe.events_until(finished_or_failed("back"))
    finally:
        probe.close()
    assert events[-1]["event"] == "finished"
    assert contains_speech(capture.samples())


def test_sigterm_while_speaking_exits_cleanly_and_the_queue_survives_the_restart(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker)
    daemon.start()
    long_text = "This announcement is long. " * 200
    for n in range(3):
        probe.publish(f"herald/{node_id}/say", json.dumps({"text": long_text, "id": f"long{n}"}))
    probe.events_until(
        lambda events: (
            {e["event"] for e in events} >= {"queued", "started"}
            and sum(e["event"] == "queued" for e in events) == 3
        )
    )

    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.0
    assert any("kept in the journal for the restart" in line for line in daemon.log_lines)

    daemon.start()  # the same config, the same state directory

    def finished(events: list[dict[str, object]]) -> set[object]:
        return {e["id"] for e in events if e["event"] == "finished"}

    events = probe.events_until(lambda events: len(finished(events)) == 3, timeout=60)
    # What was cut short or waiting is spoken after the restart; nothing failed or vanished.
    assert not [e for e in events if e["event"] in ("failed", "dropped", "expired")]


def test_say_command_waits_for_the_daemon_and_prints_the_timeline(
    broker: Broker, make_daemon: DaemonFactory, capture: Capture
) -> None:
    daemon = make_daemon(broker)
    daemon.start()
    result = subprocess.run(
        [sys.executable, "-m", "herald", "say", "--config", str(daemon.config_path), "Hi there"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["queued", "started", "finished"]
    assert "voice=espeak" in lines[1]
    assert contains_speech(capture.samples())


def test_say_all_and_group_follow_every_node_that_speaks_it(
    broker: Broker, make_daemon: DaemonFactory, node_id: str, tmp_path: Path
) -> None:
    downstairs = make_daemon(broker, mqtt='groups = ["downstairs"]\n')
    upstairs = make_daemon(broker)
    upstairs.config_path.write_text(
        upstairs.config_path.read_text()
        .replace(f'node_id = "{node_id}"', f'node_id = "{node_id}-up"')
        .replace(str(tmp_path / "state"), str(tmp_path / "state-up"))
    )
    downstairs.start(wait_until="herald: ready")
    upstairs.start(wait_until="herald: ready")

    def say(*target: str) -> tuple[int, list[list[str]]]:
        argv = [sys.executable, "-m", "herald", "say", "--config", str(downstairs.config_path)]
        result = subprocess.run(
            [*argv, *target, "--chime", "none", "Dinner is ready"],
            env=downstairs.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode, [line.split()[1:3] for line in result.stdout.splitlines()]

    status, lines = say("--all")
    assert status == 0
    for node in (node_id, f"{node_id}-up"):
        assert [kind for who, kind in lines if who == node] == ["queued", "started", "finished"]
    status, lines = say("--group", "downstairs")
    assert (status, {who for who, _ in lines}) == (0, {node_id})


def test_say_command_without_a_daemon_fails_with_a_clear_message(
    broker: Broker, make_daemon: DaemonFactory
) -> None:
    nobody_listening = make_daemon(broker)  # written, never started
    result = subprocess.run(
        [sys.executable, "-m", "herald", "say", "--config", str(nobody_listening.config_path), "x"],
        env=nobody_listening.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no answer from herald node" in result.stderr
    assert "Traceback" not in result.stderr
