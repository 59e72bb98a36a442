"""Reliability: an audio device that hangs instead of failing, and alsa-lib's own stderr noise.

The device is a real one through real alsa-lib: a `pulse` PCM on a PulseAudio server of the
test's own. SIGSTOP freezes the server, as a wedged USB driver or a sound server that stops
answering would: a write into the PCM then blocks for good (alsa-lib never times it out), and
only the output thread knows. A suspended sink makes the other kind of hang: writes return, but
the buffer never plays out. The systemd watchdog must stop (systemd then restarts Herald), and
an ERROR line must say which device is stuck and for how long; playing a long sound, which
takes many short calls into the device, must never look stuck.

When a device fails to open, alsa-lib prints its own lines ("ALSA lib pulse.c:242:(...)") to
stderr, on every attempt; Herald sends them to its debug log and logs the failure once itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from herald.audio.alsa import CLOSE_WAIT_S, AlsaOutput
from herald.config import AudioConfig
from herald.timing import AUDIO_RETRY_S, HANG_AFTER_S, HEALTH_CHECK_S
from tests.conftest import DaemonFactory
from tests.support import (
    RATE,
    Broker,
    DaemonProcess,
    MqttProbe,
    NotifyListener,
    PulseServer,
    daemon_env,
    got,
    pulse_socket,
    settled,
    wait_for,
)

DEVICE = "herald_hanging"
LONG = "This one is long on purpose: the sound server freezes while it plays, then thaws again."
# The hang bound the in-process tests ask for (the daemon's is HANG_AFTER_S). Above 2 s: on the
# test's PulseAudio null sink, the first write after each start blocks for about 1.8 s.
BOUND_S = 4.0
SLACK_S = 5.0  # two shared cores, other tests running: timing is generous

ASOUNDRC = """
pcm.herald_hanging {
    type pulse
    server "unix:SOCKET"
    handle_underrun true
}
"""


@dataclass
class HangingSpeaker:
    """A PulseAudio server of the test's own, which the test can freeze and thaw."""

    home: Path  # the daemon's XDG_CONFIG_HOME: its asoundrc and the server's socket
    server: PulseServer

    def freeze(self) -> None:
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            self.server.process.send_signal(signal.SIGCONT)

    def suspend(self, suspended: bool) -> None:
        """Suspend the sink (it plays nothing; the server still answers) or resume it."""
        subprocess.run(
            ["pactl", "--server", self.server.server, "suspend-sink", "herald_sink",
             "1" if suspended else "0"],
            check=True, timeout=10,
        )  # fmt: skip


@pytest.fixture
def speaker() -> Iterator[HangingSpeaker]:
    # A short path of its own: a unix socket's path may not exceed 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="herald-hang-"))
    (home / "alsa").mkdir()
    asoundrc = ASOUNDRC.replace("SOCKET", str(pulse_socket(home)))
    (home / "alsa" / "asoundrc").write_text(asoundrc)
    made = HangingSpeaker(home, PulseServer(home))
    yield made
    made.thaw()  # a stopped process would not hear the SIGTERM that stops it
    made.server.stop()
    shutil.rmtree(home, ignore_errors=True)


def tone(seconds: float, hz: float = 440) -> Any:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


# --- the output thread: what counts as stuck, and what does not ---------------------------------


@pytest.fixture
def pulse_output(speaker: HangingSpeaker, monkeypatch: pytest.MonkeyPatch) -> AlsaOutput:
    """An AlsaOutput in this process on the speaker's server (alsa-lib's `pulse` PCM connects
    to $PULSE_SERVER: this process's ALSA configuration stays the session's)."""
    speaker.server.start()
    monkeypatch.setenv("PULSE_SERVER", speaker.server.server)
    return AlsaOutput(AudioConfig(device="pulse"))


async def until_hung(output: AlsaOutput, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    while (problem := output.hung(BOUND_S)) is None:
        assert time.monotonic() < deadline, f"not hung after {within_s} s: {output.blocked()}"
        await asyncio.sleep(0.02)
    return problem


def test_a_long_sound_is_never_stuck_but_a_write_that_never_returns_is(
    speaker: HangingSpeaker, pulse_output: AlsaOutput
) -> None:
    output = pulse_output
    seen: list[str] = []
    longest = [0.0]

    async def watch() -> None:
        while True:
            if (blocked := output.blocked()) is not None:
                longest[0] = max(longest[0], blocked[1])
            if (problem := output.hung(BOUND_S)) is not None:
                seen.append(problem)
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        await output.open()
        watching = asyncio.create_task(watch())
        # 5 s of sound at real-time pace, longer than the bound: a period written at a time,
        # each write blocking until there is room, then the buffer playing out.
        started = time.monotonic()
        await output.play(tone(5.0))
        await output.finish()
        assert time.monotonic() - started > BOUND_S
        watching.cancel()
        assert not seen, f"a sound that plays was taken for a hang: {seen}"
        assert output.blocked() is None  # idle: waiting on nothing

        playing = asyncio.create_task(output.play(tone(6.0)))
        await asyncio.sleep(2.5)  # past the slow first write: the sound plays
        speaker.freeze()
        frozen_at = time.monotonic()
        try:
            problem = await until_hung(output, BOUND_S + SLACK_S)
            assert time.monotonic() - frozen_at >= BOUND_S - 0.2  # the write began just before
            stuck = r"ALSA device 'pulse' has been stuck for \d+ s writing to it"
            assert re.fullmatch(stuck, problem), problem
        finally:
            speaker.thaw()
        # The write returns once the server answers: not stuck any more.
        deadline = time.monotonic() + SLACK_S
        while output.hung(BOUND_S) is not None:
            assert time.monotonic() < deadline, output.blocked()
            await asyncio.sleep(0.02)
        playing.cancel()  # interrupted, as the Speaker interrupts a sound
        output.drop()
        await output.close()

    asyncio.run(scenario())
    assert longest[0] < BOUND_S


def test_a_buffer_that_never_plays_out_is_stuck(
    speaker: HangingSpeaker, pulse_output: AlsaOutput
) -> None:
    """Every call returns, but nothing plays: waiting for the buffer to play out is stuck once
    the device has played nothing of it for the bound."""
    output = pulse_output

    async def scenario() -> None:
        await output.open()
        await output.play(tone(0.5))
        await output.finish()
        speaker.suspend(True)
        try:
            await output.play(tone(0.03))  # less than a buffer: the writes return
            finishing = asyncio.create_task(output.finish())
            problem = await until_hung(output, BOUND_S + SLACK_S)
            assert problem.endswith("waiting for its buffer to play"), problem
            assert not finishing.done()
        finally:
            speaker.suspend(False)
        await asyncio.wait_for(finishing, 10)
        assert output.hung(BOUND_S) is None
        await output.close()

    asyncio.run(scenario())


def test_closing_does_not_wait_for_a_thread_stuck_on_the_device(
    speaker: HangingSpeaker, pulse_output: AlsaOutput, caplog: pytest.LogCaptureFixture
) -> None:
    output = pulse_output

    async def scenario() -> None:
        await output.open()
        playing = asyncio.create_task(output.play(tone(3.0)))
        await asyncio.sleep(0.3)
        speaker.freeze()
        stuck = [t for t in threading.enumerate() if t.name == "alsa-out"]
        try:
            await until_hung(output, BOUND_S + SLACK_S)
            started = time.monotonic()
            await asyncio.wait_for(output.close(), CLOSE_WAIT_S + SLACK_S)
            assert time.monotonic() - started < CLOSE_WAIT_S + 1.0
        finally:
            speaker.thaw()
        playing.cancel()
        for thread in stuck:  # unstuck, it closes the device and ends
            thread.join(10)
            assert not thread.is_alive()

    with caplog.at_level(logging.WARNING, logger="herald.audio.alsa"):
        asyncio.run(scenario())
    assert any("closing without it" in r.getMessage() for r in caplog.records), caplog.text


# --- the daemon: the watchdog, and the log without systemd ---------------------------------------


def daemon_on(
    speaker: HangingSpeaker, make_daemon: DaemonFactory, broker: Broker, **env: str
) -> DaemonProcess:
    daemon = make_daemon(broker, device=DEVICE)
    daemon.env = daemon_env(speaker.home)  # alsa-lib reads the speaker's asoundrc
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        daemon.env.pop(name, None)  # the test runner's own systemd, if any, is not ours
    daemon.env.update(env)
    return daemon


def say(probe: MqttProbe, node_id: str, ident: str, text: str) -> None:
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": text, "id": ident}))


def stuck_lines(daemon: DaemonProcess) -> list[str]:
    """The ERROR lines saying the device is stuck."""
    return [line for line in daemon.log_lines if "ERROR" in line and "has been stuck" in line]


def test_a_sound_server_that_hangs_mid_announcement_stops_the_watchdog(
    speaker: HangingSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    speaker.server.start()
    notify = NotifyListener(speaker.home / "notify")
    daemon = daemon_on(
        speaker,
        make_daemon,
        broker,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="2000000",  # a 2 s watchdog: a ping every second
    )
    daemon.start(wait_until="herald: ready")
    say(probe, node_id, "long", LONG)
    events = probe.events_until(got("started", "long"))
    time.sleep(1.0)  # well into the speech: the server takes it in real time

    speaker.freeze()
    frozen_at = time.monotonic()
    try:
        daemon.wait_for_log("has been stuck for", timeout=HANG_AFTER_S + 1 + SLACK_S)
        noticed_at = time.monotonic()
        time.sleep(4.0)  # the watchdog stays hungry meanwhile
        pings = [at for at in notify.times_of("WATCHDOG") if at > frozen_at - 3]
        last_ping = max(pings)
        # Fed while stuck for less than the bound (a ping a second), and not since.
        assert last_ping > frozen_at + HANG_AFTER_S - 3, (pings, frozen_at)
        assert max(b - a for a, b in itertools.pairwise(pings)) < 2.5, pings
        assert last_ping < frozen_at + HANG_AFTER_S + 1 + SLACK_S
        assert time.monotonic() - last_ping > 3.5, "pings go on while the device is stuck"
        # The loop itself still turns: the status line goes on, and says what is stuck.
        statuses = [f.get("STATUS", "") for at, f in list(notify.messages) if at > last_ping]
        assert len(statuses) >= 3, statuses
        assert all(f"ALSA device '{DEVICE}' has been stuck for" in s for s in statuses), statuses
        (line,) = stuck_lines(daemon)
        assert line.startswith("ERROR "), line
        assert f"ALSA device '{DEVICE}' has been stuck for" in line and "writing to it" in line
        assert "systemd restarts Herald" in line
        seconds = int(re.findall(r"stuck for (\d+) s", line)[0])
        assert HANG_AFTER_S <= seconds <= noticed_at - frozen_at + 1, line
        assert daemon.alive
    finally:
        speaker.thaw()
    thawed_at = time.monotonic()

    # Unstuck before systemd acted: the pings go on, and the announcement ends as usual.
    daemon.wait_for_log("not stuck any more", timeout=SLACK_S)
    wait_for(lambda: max(notify.times_of("WATCHDOG")) > thawed_at, SLACK_S, "pings again")
    events += probe.events_until(settled(["long"]), timeout=30)
    assert [e["event"] for e in events if e["id"] == "long"][-1] == "finished", events
    assert len(stuck_lines(daemon)) == 1
    notify.close()


def test_without_systemd_a_hang_is_logged_once_and_stopping_does_not_wait_for_it(
    speaker: HangingSpeaker,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    speaker.server.start()
    daemon = daemon_on(speaker, make_daemon, broker)
    daemon.start(wait_until="herald: ready")
    say(probe, node_id, "long", LONG)
    probe.events_until(got("started", "long"))
    time.sleep(1.0)

    speaker.freeze()
    try:
        daemon.wait_for_log("has been stuck for", timeout=HANG_AFTER_S + HEALTH_CHECK_S + SLACK_S)
        time.sleep(HEALTH_CHECK_S + 1.0)  # another check or two: still one line
        (line,) = stuck_lines(daemon)
        assert line.startswith("ERROR ") and f"ALSA device '{DEVICE}'" in line, line
        assert "without systemd's watchdog nothing restarts Herald" in line
        assert daemon.alive

        stopping = time.monotonic()
        assert daemon.stop(timeout=15) == 0
        assert time.monotonic() - stopping < 2.0 + CLOSE_WAIT_S + 1.0
        assert any("closing without it" in line for line in daemon.log_lines), daemon.log_lines
    finally:
        speaker.thaw()


# --- alsa-lib's own messages ---------------------------------------------------------------------


def test_a_device_that_will_not_open_leaves_no_alsa_lib_lines_on_stderr(
    speaker: HangingSpeaker, broker: Broker, make_daemon: DaemonFactory
) -> None:
    daemon = daemon_on(speaker, make_daemon, broker)  # its server is not started: refused
    daemon.start()
    daemon.wait_for_log(f"cannot open ALSA device '{DEVICE}'")
    time.sleep(AUDIO_RETRY_S + 1.0)  # the next attempt: no line either
    assert daemon.alive
    errors = [line for line in daemon.log_lines if f"cannot open ALSA device '{DEVICE}'" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR "), errors
    assert not [line for line in daemon.log_lines if line.startswith("ALSA lib")], daemon.log_lines
