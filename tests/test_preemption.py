"""Priorities end to end, in the real daemon: what needs the real program and real time.

A critical announcement cutting in, followed sample by sample through ALSA and then heard on a
real-time output with its latencies; `stop` and `clear` over MQTT. The fake Aura server speaks
each text as a tone of its own pitch at real-time pace, so an announcement lasts as long as it
would on a speaker, and every sample in the capture says which announcement it belongs to.

The rules themselves (drop on preempt, equal priority, expiry, stop, clear, quiet hours,
repeat, volume, preemption during a chime or twice in a row) are tested in process, on virtual
time: tests/test_priorities.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from herald.audio.chimes import load_chime
from tests.conftest import DaemonFactory
from tests.fake_deepgram import FakeDeepgramOptions, dominant_hz, synthesize, tone_hz
from tests.support import (
    RATE,
    Broker,
    Capture,
    DaemonProcess,
    FakeDeepgramThread,
    MqttProbe,
    PulseServer,
    finished_or_failed,
    got,
    is_final,
    settled,
    wait_for,
)

LOW = "A long and leisurely announcement about the washing machine, which has finished at last."
CRITICAL = "Smoke in the kitchen!"


@pytest.fixture
def paced_voice() -> Iterator[FakeDeepgramThread]:
    with FakeDeepgramThread(FakeDeepgramOptions(first_byte_s=0.05, pace=1.0)) as fake:
        yield fake


def cloud_daemon(
    make_daemon: DaemonFactory,
    broker: Broker,
    fake: FakeDeepgramThread,
    extra: str = "",
    device: str | None = None,
) -> DaemonProcess:
    daemon = make_daemon(
        broker,
        f'[voice]\nengines = ["deepgram"]\n[voice.deepgram]\nurl = "{fake.server.url}"\n'
        "flushes_per_minute = 100\n" + extra,
        device=device,
        as_sent=True,  # the fake's audio and the chimes are followed sample by sample
    )
    daemon.env["DEEPGRAM_API_KEY"] = "test-key"
    daemon.start()
    wait_for(lambda: fake.server.connections >= 1, 10, "the warm socket")
    return daemon


def say(probe: MqttProbe, node_id: str, **payload: Any) -> None:
    probe.publish(f"herald/{node_id}/say", json.dumps(payload))


def started(ident: str) -> Any:
    return lambda events: any(e["event"] == "started" and e["id"] == ident for e in events)


def test_critical_cuts_in_and_the_low_one_is_heard_again_from_its_start(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    capture: Capture,
    paced_voice: FakeDeepgramThread,
) -> None:
    cloud_daemon(make_daemon, broker, paced_voice)
    say(probe, node_id, text=LOW, id="low", priority="low")
    events = probe.events_until(started("low"))
    time.sleep(1.0)
    say(probe, node_id, text=CRITICAL, id="fire", priority="critical")
    events += probe.events_until(finished_or_failed("low"), timeout=60)

    kinds = [(e["event"], e["id"]) for e in events]
    assert kinds.index(("preempted", "low")) < kinds.index(("started", "fire"))
    assert kinds.index(("finished", "fire")) < kinds.index(("finished", "low"))
    preempted = next(e for e in events if e["event"] == "preempted")
    assert (preempted["by"], preempted["requeued"]) == ("fire", True)

    played = capture.samples()
    alarm = load_chime("alarm", RATE)
    low, fire = (np.frombuffer(synthesize(t, RATE), dtype="<i2") for t in (LOW, CRITICAL))
    # The capture holds: part of the low one, the alarm chime, the critical text, the low one
    # again from its start, each whole and in order (a period of padding after each).
    cut = find(played, alarm)
    assert 0.5 * RATE < cut < 3 * RATE  # about a second of the low one was heard first
    assert dominant_hz(played[: cut - 960], RATE) == pytest.approx(tone_hz(LOW), abs=3)
    at = cut + len(alarm)
    assert np.array_equal(played[at : at + len(fire)], fire)
    at = find(played, low[:4800], start=at + len(fire))
    assert np.array_equal(played[at : at + len(low)], low)


def find(haystack: np.ndarray, needle: np.ndarray, start: int = 0) -> int:
    """Where `needle` first appears in `haystack` at or after `start` (exact samples).

    Only the positions where the needle's loudest sample lines up are compared whole (silence
    would match everywhere): comparing every position at once built an array of
    len(haystack) x len(needle) booleans, gigabytes for a chime in a recording.
    """
    region, length = haystack[start:], len(needle)
    anchor = int(np.argmax(np.abs(needle.astype(np.int64))))
    lined_up = region[anchor : len(region) - length + 1 + anchor] == needle[anchor]
    for at in np.flatnonzero(lined_up):
        if np.array_equal(region[at : at + length], needle):
            return start + int(at)
    raise AssertionError("not found")


def test_stop_and_clear_over_mqtt(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    paced_voice: FakeDeepgramThread,
) -> None:
    """The `clear` and `stop` topics reach the queue (the rules themselves, and expiry, are
    in tests/test_priorities.py)."""
    cloud_daemon(make_daemon, broker, paced_voice)
    say(probe, node_id, text=LOW, id="long", chime=False)
    events = probe.events_until(started("long"))
    say(probe, node_id, text="Cleared one.", id="c1")
    say(probe, node_id, text="Cleared two.", id="c2")
    events += probe.events_until(got("queued", "c2"))
    probe.publish(f"herald/{node_id}/clear", "")
    events += probe.events_until(settled(["c1", "c2"]))
    probe.publish(f"herald/{node_id}/stop", "")
    events += probe.events_until(settled(["long"]))
    say(probe, node_id, text="After the stop.", id="after", chime=False)
    events += probe.events_until(finished_or_failed("after"))

    fate = {e["id"]: (e["event"], e.get("reason")) for e in events if is_final(e)}
    assert fate["c1"] == fate["c2"] == ("dropped", "cleared")
    assert fate["long"] == ("dropped", "stopped")
    assert fate["after"][0] == "finished"


def test_preemption_through_a_real_time_output_reports_its_latencies(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    pulse: PulseServer,
    paced_voice: FakeDeepgramThread,
    tmp_path: Path,
    record_property: Any,
) -> None:
    daemon = cloud_daemon(make_daemon, broker, paced_voice, device="herald_paced")
    with pulse.record(tmp_path / "heard.raw") as recording:
        say(probe, node_id, text=LOW, id="low", priority="low")
        probe.events_until(started("low"))
        time.sleep(1.5)
        say(probe, node_id, text=CRITICAL, id="fire", priority="critical")
        probe.events_until(finished_or_failed("fire"), timeout=30)
        time.sleep(0.5)
    heard = np.frombuffer(recording.read_bytes(), dtype="<i2")
    frame = RATE // 100  # 10 ms
    labels = [label_of(heard[i : i + frame]) for i in range(0, len(heard) - frame, frame)]
    runs = compress(labels)
    # A lone 10 ms frame can be misread (at 10 ms the spectrum has 100 Hz bins, and the sink
    # glitches when it starts): what a listener hears lasts at least 30 ms.
    lasting = [name for name, n in runs if n >= 3 and name not in ("other", "quiet")]
    heard_in_order = [name for name, _ in compress(lasting)]
    # What a listener hears: the low voice, cut; the alarm; the critical voice; the low again.
    assert heard_in_order[:4] == ["low", "alarm", "critical", "low"], runs
    alarm_at = next(i for i, (name, _) in enumerate(runs) if name == "alarm")
    low_before = max(i for i, (name, _) in enumerate(runs[:alarm_at]) if name == "low")
    gap_ms = 10 * sum(frames for _, frames in runs[low_before + 1 : alarm_at])
    record_property("switch_gap_ms", gap_ms)
    # Inside the daemon: from the critical message's arrival (the drop is asked for there)
    # to the old voice silenced, and on to the newcomer's first sound.
    switch = next((line for line in daemon.log_lines if "audio: silent" in line), None)
    assert switch is not None, "\n".join(daemon.log_lines[-30:])
    silent_ms, next_ms = (float(x) for x in re.findall(r"([\d.]+) ms", switch))
    record_property("silent_after_ms", silent_ms)
    record_property("next_sound_after_ms", next_ms)
    print(
        f"\npreemption: old voice silent {silent_ms} ms after the message, next sound "
        f"{next_ms} ms later; {gap_ms} ms of silence heard between them (10 ms frames)"
    )
    assert silent_ms < 1000 and next_ms < 1000  # generous: these machines are shared


def label_of(chunk: np.ndarray) -> str:
    if np.sqrt(np.mean(chunk.astype(np.float64) ** 2)) < 200:
        return "quiet"
    hz = dominant_hz(chunk, RATE)
    for name, expected in (("low", tone_hz(LOW)), ("critical", tone_hz(CRITICAL))):
        if abs(hz - expected) < 60:
            return name
    if abs(hz - 960) < 60 or abs(hz - 770) < 60:
        return "alarm"
    return "other"


def compress(labels: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + 1)
        else:
            runs.append((label, 1))
    return runs
