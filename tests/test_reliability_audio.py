"""Reliability: the ALSA device fails to open, or vanishes while the daemon runs, then comes back.

The device is a real one through real alsa-lib: a `pulse` PCM on a PulseAudio server of the
test's own, which is killed to unplug the speaker (alsa-lib's pulse plugin then fails to open
with "Connection refused", and a write on an open PCM fails with EIO, much as one on a USB
speaker pulled out fails with ENODEV) and started again to plug it back in. A `file` PCM in
front of it stores every sample the server took, so a test can tell that audio reached the
device after it came back. (alsa-lib's `file` plugin alone cannot stand in for a missing
device: a FILE in a directory that does not exist opens, and its writes "succeed" with only a
warning on stderr.)

For each fault: every accepted announcement gets exactly one final event (nothing is lost
without an event saying why), and afterwards the daemon is alive and a fresh announcement is
spoken with its audio reaching the device.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from herald.timing import AUDIO_RETRY_S
from tests.conftest import DaemonFactory
from tests.support import (
    Broker,
    DaemonProcess,
    MqttProbe,
    NotifyListener,
    PulseServer,
    contains_speech,
    daemon_env,
    fates,
    pulse_socket,
    settled,
)

DEVICE = "herald_unpluggable"
RETRY_S = AUDIO_RETRY_S  # how often the daemon tries a missing device again (scaled: 2.5 s)
LONG = "This one is long on purpose: the speaker is pulled out while it plays, then comes back."

ASOUNDRC = """
# The speaker: a PulseAudio server the test starts and kills; everything the server took is
# also stored in CAPTURE (the file plugin writes only what its slave accepted).
pcm.herald_unpluggable {
    type file
    slave.pcm {
        type pulse
        server "unix:SOCKET"
        handle_underrun true
    }
    file "CAPTURE"
    format "raw"
}
"""


@dataclass
class UnpluggableSpeaker:
    """An ALSA device that can be unplugged and plugged in again while the daemon runs."""

    home: Path  # the daemon's XDG_CONFIG_HOME: its asoundrc and the server's socket
    capture: Path
    server: PulseServer

    @classmethod
    def create(cls, home: Path) -> UnpluggableSpeaker:
        capture = home / "played.raw"
        (home / "alsa").mkdir(parents=True)
        asoundrc = ASOUNDRC.replace("SOCKET", str(pulse_socket(home)))
        (home / "alsa" / "asoundrc").write_text(asoundrc.replace("CAPTURE", str(capture)))
        return cls(home, capture, PulseServer(home))

    def plug_in(self) -> None:
        self.server.start()

    def unplug(self) -> None:
        """Kill the server at once, as pulling the plug would: no goodbye to its clients."""
        process = self.server.process
        assert process is not None
        process.kill()
        process.wait(5)
        pulse_socket(self.home).unlink(missing_ok=True)  # its successor binds a fresh one

    def samples(self) -> npt.NDArray[np.int16]:
        """What the device has played since it was last opened (the file plugin truncates)."""
        if not self.capture.exists():
            return np.zeros(0, dtype=np.int16)
        return np.frombuffer(self.capture.read_bytes(), dtype="<i2").astype(np.int16)


@pytest.fixture
def speaker() -> Iterator[UnpluggableSpeaker]:
    # A short path of its own: a unix socket's path may not exceed 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="herald-unplug-"))
    made = UnpluggableSpeaker.create(home)
    yield made
    made.server.stop()
    shutil.rmtree(home, ignore_errors=True)


def daemon_on(
    speaker: UnpluggableSpeaker, make_daemon: DaemonFactory, broker: Broker
) -> DaemonProcess:
    daemon = make_daemon(broker, device=DEVICE)
    daemon.env = daemon_env(speaker.home)  # alsa-lib reads the speaker's asoundrc
    return daemon


def ready_on(
    speaker: UnpluggableSpeaker, make_daemon: DaemonFactory, broker: Broker
) -> DaemonProcess:
    """The speaker plugged in, and a daemon using it, ready."""
    speaker.plug_in()
    daemon = daemon_on(speaker, make_daemon, broker)
    daemon.start(wait_until="herald: ready")
    return daemon


def say(probe: MqttProbe, node_id: str, ident: str, text: str, **fields: Any) -> None:
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": text, "id": ident, **fields}))


def events_during(probe: MqttProbe, seconds: float) -> list[dict[str, Any]]:
    """Every event that arrives in the next `seconds`."""
    deadline = time.monotonic() + seconds
    collected: list[dict[str, Any]] = []
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(queue.Empty):
            collected.append(probe.next_json(left))
    return collected


def cpu_seconds(daemon: DaemonProcess) -> float:
    """User and system CPU time the daemon process has used so far."""
    assert daemon.process is not None
    fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watched(
    daemon: DaemonProcess, probe: MqttProbe, seconds: float
) -> tuple[list[dict[str, Any]], float]:
    """The events of the next `seconds`, and the CPU time the daemon used meanwhile."""
    cpu_before = cpu_seconds(daemon)
    events = events_during(probe, seconds)
    return events, cpu_seconds(daemon) - cpu_before


def error_lines(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.log_lines if line.startswith("ERROR") and DEVICE in line]


def assert_fresh_announcement_is_heard(
    daemon: DaemonProcess, probe: MqttProbe, node_id: str, speaker: UnpluggableSpeaker
) -> None:
    """The daemon is healthy: alive, and a new announcement reaches the device as speech."""
    assert daemon.alive
    before = len(speaker.samples())
    say(probe, node_id, "fresh", "Everything works again.")
    events = probe.events_until(settled(["fresh"]), timeout=30)
    assert fates(events) == {"fresh": ["finished"]}
    played = speaker.samples()
    assert len(played) > before, "nothing new reached the device (or it was opened again)"
    assert contains_speech(played[before:])


# --- the device is missing at start ---------------------------------------------------------------


def test_a_device_missing_at_start_speaks_what_waited_once_it_is_plugged_in(
    speaker: UnpluggableSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    notify = NotifyListener(speaker.home / "notify")
    daemon = daemon_on(speaker, make_daemon, broker)
    daemon.env["NOTIFY_SOCKET"] = str(notify.path)
    daemon.start()
    daemon.wait_for_log(f"cannot open ALSA device '{DEVICE}'")
    idle = retained_status(broker, node_id, until=lambda s: s["audio"] is not None)
    assert idle["state"] == "idle" and DEVICE in idle["audio"], idle  # seen before any message

    # Published while the speaker is missing: the first one becomes current and waits for the
    # device; the others wait in the queue. Two of them go stale before the device comes back.
    say(probe, node_id, "short-lived", "You will never hear this.", ttl=2)
    say(probe, node_id, "kept1", "The speaker is back.")
    say(probe, node_id, "stale", "Nor this.", ttl=3)
    say(probe, node_id, "kept2", "And this is spoken second.")
    waiting, cpu_used = watched(daemon, probe, 6.0)

    queued = [e["id"] for e in waiting if e["event"] == "queued"]
    assert queued == ["short-lived", "kept1", "stale", "kept2"]
    assert fates(waiting) == {"short-lived": ["expired"], "stale": ["expired"]}
    expiry = next(e for e in waiting if e["id"] == "short-lived" and e["event"] == "expired")
    assert "audio device" in expiry["reason"]  # it expired waiting for the device: says so
    assert not [e for e in waiting if e["event"] == "started"]
    assert daemon.alive
    assert cpu_used < 0.25 * 6.0, f"the daemon spins while it waits: {cpu_used:.2f} s of CPU"
    # Not ready, and systemd's status line says why.
    assert not any("herald: ready" in line for line in daemon.log_lines)
    told = notify.fields()
    assert not [fields for fields in told if "READY" in fields]
    assert any(f"cannot open ALSA device '{DEVICE}'" in f.get("STATUS", "") for f in told), told
    # So does the status Home Assistant reads.
    status = retained_status(broker, node_id)
    assert status["state"] == "waiting_for_audio", status
    assert f"cannot open ALSA device '{DEVICE}'" in status["audio"], status

    speaker.plug_in()
    events = waiting + probe.events_until(settled(["kept1", "kept2"]), timeout=RETRY_S + 25)
    daemon.wait_for_log("herald: ready", timeout=RETRY_S + 5)

    assert fates(events) == {
        "short-lived": ["expired"],
        "stale": ["expired"],
        "kept1": ["finished"],
        "kept2": ["finished"],
    }
    assert [e["id"] for e in events if e["event"] == "started"] == ["kept1", "kept2"]
    assert contains_speech(speaker.samples())
    assert notify.until("READY", timeout=5)["READY"] == "1"
    notify.close()
    # One clear line about the missing device, not one per attempt.
    assert len(error_lines(daemon)) == 1, error_lines(daemon)

    assert_fresh_announcement_is_heard(daemon, probe, node_id, speaker)
    status = retained_status(broker, node_id, until=lambda s: s["state"] == "idle")
    assert status["audio"] is None, status


def retained_status(
    broker: Broker, node_id: str, until: Callable[[dict[str, Any]], bool] = lambda _: True
) -> dict[str, Any]:
    """The status Herald left on the broker (the first that satisfies `until`)."""
    reader = MqttProbe(broker, f"herald/{node_id}/status")
    try:
        while True:
            status: dict[str, Any] = json.loads(reader.messages.get(timeout=10)[1])
            if until(status):
                return status
    finally:
        reader.close()


def test_stopping_while_the_device_is_missing_keeps_the_waiting_ones_for_the_restart(
    speaker: UnpluggableSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    daemon = daemon_on(speaker, make_daemon, broker)
    daemon.start()
    daemon.wait_for_log(f"cannot open ALSA device '{DEVICE}'")
    say(probe, node_id, "one", "Kept across the restart.")
    say(probe, node_id, "two", "Also kept.")
    events = probe.events_until(lambda es: sum(e["event"] == "queued" for e in es) == 2)
    daemon.wait_for_log("announcement one waits for the audio device")

    stopped_at = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - stopped_at < 2.0
    assert any("2 announcements kept in the journal" in line for line in daemon.log_lines)

    speaker.plug_in()
    daemon.start(wait_until="herald: ready")  # the same state directory: the journal replays
    events += probe.events_until(settled(["one", "two"]), timeout=30)

    assert fates(events) == {"one": ["finished"], "two": ["finished"]}
    assert [e["id"] for e in events if e["event"] == "started"] == ["one", "two"]
    assert contains_speech(speaker.samples())
    assert_fresh_announcement_is_heard(daemon, probe, node_id, speaker)


# --- the device vanishes while the daemon runs ----------------------------------------------------


def test_a_speaker_unplugged_while_speaking_says_it_again_once_it_is_back(
    speaker: UnpluggableSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    daemon = ready_on(speaker, make_daemon, broker)
    say(probe, node_id, "long", LONG)
    events = probe.events_until(lambda es: any(e["event"] == "started" for e in es))
    time.sleep(1.0)  # well into the speech: the server plays it in real time

    speaker.unplug()
    say(probe, node_id, "later", "Published while the speaker is unplugged.")
    unplugged, cpu_used = watched(daemon, probe, 6.0)
    events += unplugged

    assert daemon.alive
    assert [e["event"] for e in unplugged if e["id"] == "later"] == ["queued"]
    assert not fates(unplugged), "an announcement gave up while the speaker was unplugged"
    assert cpu_used < 0.25 * 6.0, f"the daemon spins while it waits: {cpu_used:.2f} s of CPU"
    # The write that failed, named; then no error per attempt to open the device again.
    assert len(error_lines(daemon)) == 1, error_lines(daemon)
    assert "Input/output error" in error_lines(daemon)[0]

    speaker.plug_in()
    events += probe.events_until(settled(["long", "later"]), timeout=RETRY_S + 30)

    assert fates(events) == {"long": ["finished"], "later": ["finished"]}
    # Cut off by the fault, the long one is spoken again from its start, then the later one.
    assert [e["id"] for e in events if e["event"] == "started"] == ["long", "long", "later"]
    assert contains_speech(speaker.samples())
    assert len(error_lines(daemon)) == 1, error_lines(daemon)
    assert_fresh_announcement_is_heard(daemon, probe, node_id, speaker)


def test_a_speaker_unplugged_between_announcements_speaks_the_next_once_it_is_back(
    speaker: UnpluggableSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    daemon = ready_on(speaker, make_daemon, broker)
    say(probe, node_id, "before", "Spoken before the speaker is pulled out.")
    events = probe.events_until(settled(["before"]))

    speaker.unplug()  # the device is open but idle: the daemon finds out when it next writes
    say(probe, node_id, "after", "Spoken once the speaker is back.")
    unplugged, cpu_used = watched(daemon, probe, 4.0)
    events += unplugged

    assert daemon.alive
    assert not fates(unplugged), "an announcement gave up while the speaker was unplugged"
    assert cpu_used < 0.25 * 4.0, f"the daemon spins while it waits: {cpu_used:.2f} s of CPU"
    daemon.wait_for_log("announcement after waits for the audio device")

    speaker.plug_in()
    events += probe.events_until(settled(["after"]), timeout=RETRY_S + 25)

    assert fates(events) == {"before": ["finished"], "after": ["finished"]}
    assert contains_speech(speaker.samples())  # opened again: only what came after
    assert len(error_lines(daemon)) == 1, error_lines(daemon)  # the write that failed
    assert_fresh_announcement_is_heard(daemon, probe, node_id, speaker)


def test_an_announcement_the_device_keeps_failing_fails_with_the_reason(
    speaker: UnpluggableSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    """A flapping speaker: the announcement is tried again a bounded number of times
    (speaker.DEVICE_FAULTS_MAX = 3), then fails with the device's error; the next is spoken."""
    daemon = ready_on(speaker, make_daemon, broker)
    say(probe, node_id, "flapping", LONG)
    events: list[dict[str, Any]] = []
    for attempt in (1, 2, 3):
        events += probe.events_until(
            lambda es: any(e["event"] == "started" for e in es), timeout=RETRY_S + 20
        )
        time.sleep(1.0)  # into the speech
        speaker.unplug()
        if attempt < 3:
            speaker.plug_in()
    events += probe.events_until(settled(["flapping"]), timeout=10)

    failed = next(e for e in events if e["event"] == "failed")
    assert f"ALSA device '{DEVICE}' failed" in failed["reason"]
    assert fates(events) == {"flapping": ["failed"]}
    assert [e["id"] for e in events if e["event"] == "started"] == ["flapping"] * 3

    speaker.plug_in()
    assert_fresh_announcement_is_heard(daemon, probe, node_id, speaker)
