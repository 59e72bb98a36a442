"""Reliability: the cloud voice's server fails under the real daemon, and nothing is lost.

Fault injection against `herald run` in a process of its own, with a real mosquitto, ALSA and the
fake Aura server: the server dies in the middle of announcements (its connections dropped, closed
with 1011, or its whole process SIGKILLed and started again), or refuses handshakes (401, 429,
503). For every fault, each accepted announcement ends in exactly one final event that says why,
and afterwards the daemon is alive and speaks a fresh announcement with the cloud voice, not
degraded, on a socket that was open before it arrived.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import DaemonFactory
from tests.fake_deepgram import FakeDeepgramOptions, synthesize
from tests.support import (
    FINAL_EVENTS,
    PERIOD,
    REPO,
    Broker,
    Capture,
    DaemonProcess,
    FakeDeepgramThread,
    MqttProbe,
    espeak_reference,
    fates,
    free_port,
    padded,
    similarity,
    wait_for,
)

RATE = 48000
REPLAY_LINE = "replaying it on a fresh socket"
SOCKET_OPEN = re.compile(r"deepgram: socket #\d+ open")

Event = dict[str, Any]
Samples = npt.NDArray[np.int16]


# --- helpers -------------------------------------------------------------------------------------


class Announcements:
    """Says things to one daemon and keeps every event it publishes, to check each one's fate."""

    def __init__(self, probe: MqttProbe, node_id: str) -> None:
        self.probe = probe
        self.node_id = node_id
        self.events: list[Event] = []
        self.said: list[str] = []

    def say(self, ident: str, text: str) -> None:
        self.said.append(ident)
        payload = {"text": text, "id": ident, "chime": False}
        self.probe.publish(f"herald/{self.node_id}/say", json.dumps(payload))

    def of(self, ident: str) -> list[Event]:
        return [event for event in self.events if event.get("id") == ident]

    def wait(self, ident: str, kinds: tuple[str, ...], timeout: float = 30) -> Event:
        """The first event of `ident` of one of these kinds, waiting (bounded) for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.of(ident) if e["event"] in kinds]
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kinds} event for {ident}; its events: {self.of(ident)}")
            try:
                self.events.append(self.probe.next_json(min(left, 1.0)))
            except queue.Empty:
                continue

    def final(self, ident: str, timeout: float = 30) -> Event:
        return self.wait(ident, FINAL_EVENTS, timeout)

    def assert_each_ended_once(self, settle_s: float = 1.0) -> None:
        """Every announcement said has exactly one final event, and it is `finished`."""
        deadline = time.monotonic() + settle_s
        while (left := deadline - time.monotonic()) > 0:  # late duplicates would show up here
            try:
                self.events.append(self.probe.next_json(left))
            except queue.Empty:
                break
        for ident in self.said:
            assert fates(self.of(ident)) == {ident: ["finished"]}, (ident, self.of(ident))
            assert [e["event"] for e in self.of(ident)].count("started") == 1, self.of(ident)


class FakeDeepgramProcess:
    """tests.fake_deepgram in a process of its own on a fixed port, driven through `--control`.

    Being a process, it can be SIGKILLed like a crashing server, and started again on the port
    the daemon knows.
    """

    def __init__(self, port: int, *flags: str) -> None:
        self.port = port
        self.flags = flags
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/speak"

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.fake_deepgram", "--control", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*argv, *self.flags],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.process, self._lines), daemon=True).start()
        url = self._lines.get(timeout=20)
        assert url is not None and url.strip() == self.url, f"the fake did not start: {url!r}"

    @staticmethod
    def _read(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    def command(self, line: str) -> dict[str, Any]:
        """Send one control command; its answer."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self._lines.get(timeout=15)
        assert answer is not None, "the fake exited"
        result: dict[str, Any] = json.loads(answer)
        assert "error" not in result, result
        return result

    def sockets(self) -> tuple[int, int]:
        """Handshakes accepted since it started, and sockets open now."""
        stats = self.command("stats")
        return stats["connections"], stats["open"]

    def sigkill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def fake_process() -> Iterator[FakeDeepgramProcess]:
    fake = FakeDeepgramProcess(free_port(), "--pace", "1.0", "--first-byte-ms", "20")
    fake.start()
    yield fake
    fake.stop()


def cloud_daemon(
    make_daemon: DaemonFactory, broker: Broker, url: str, key_line: str = ""
) -> DaemonProcess:
    """A daemon speaking with Deepgram first and espeak-ng when it cannot."""
    daemon = make_daemon(
        broker,
        f'[voice]\nengines = ["deepgram", "espeak"]\n[voice.deepgram]\nurl = "{url}"\n{key_line}',
        as_sent=True,  # the fake's audio is followed sample by sample
    )
    daemon.env.pop("DEEPGRAM_API_KEY", None)
    return daemon


def played_samples(capture: Capture) -> int:
    return capture.path.stat().st_size // 2 if capture.path.exists() else 0


def wait_until_played(capture: Capture, samples: int) -> None:
    """Wait (bounded) until the capture holds this many samples."""
    wait_for(lambda: played_samples(capture) >= samples, 10, f"{samples} samples played")


def ends_with_espeak(heard: Samples, text: str) -> bool:
    """The capture ends with espeak-ng saying all of `text` (then at most a period's padding)."""
    reference = espeak_reference(text)
    for pad in range(PERIOD + 64):
        end = len(heard) - pad
        if similarity(heard[end - len(reference) : end], reference) > 0.99:
            return True
    return False


def outcome(event: Event) -> tuple[str, str | None, bool | None]:
    """What happened, which voice spoke, and whether it was a fallback."""
    return event["event"], event.get("voice"), event.get("degraded")


def lines_since(daemon: DaemonProcess, mark: int, fragment: str) -> list[str]:
    return [line for line in daemon.log_lines[mark:] if fragment in line]


def assert_healthy(
    daemon: DaemonProcess,
    said: Announcements,
    sockets: Callable[[], tuple[int, int]],
    ident: str,
    timeout: float = 30,
) -> None:
    """Alive, and a fresh announcement is spoken by deepgram, not degraded, on a warm socket:
    one the server accepted before the announcement arrived and that alone carries it."""
    assert daemon.alive
    wait_for(lambda: sockets()[1] == 1, timeout, "a warm socket again")
    accepted, _ = sockets()
    said.say(ident, f"All is well again, check {ident}.")
    started = said.wait(ident, ("started", *FINAL_EVENTS))
    finished = said.final(ident)
    assert outcome(started) == ("started", "deepgram", False)
    assert outcome(finished) == ("finished", "deepgram", False)
    # The server's own count (the daemon logs a socket a moment after the server counts it).
    assert sockets() == (accepted, 1), "the announcement needed a handshake: the socket was cold"
    assert daemon.alive


# --- the server dies mid-announcement ------------------------------------------------------------

# Every way a server goes away, in turn: connections dropped without a close frame, closed with
# 1011 (an internal error), and the whole process SIGKILLed and started again a second later.
FAULTS = ("kill", "close 1011", "sigkill", "kill", "close 1011")


def test_the_server_dying_five_times_mid_announcement_loses_nothing(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    capture: Capture,
    fake_process: FakeDeepgramProcess,
) -> None:
    daemon = cloud_daemon(make_daemon, broker, fake_process.url)
    daemon.env["DEEPGRAM_API_KEY"] = "test-key"
    daemon.start()
    said = Announcements(probe, node_id)

    for round_, fault in enumerate(FAULTS):
        # A socket is warm before each announcement, so each fault hits a cloud announcement.
        wait_for(lambda: fake_process.sockets()[1] == 1, 30, "a warm socket")
        accepted_before, _ = fake_process.sockets()
        ident = f"cut{round_}"
        text = f"Announcement number {round_}, which the server will drop halfway through."
        expected = padded(synthesize(text, RATE))
        mark, played_before = len(daemon.log_lines), played_samples(capture)
        said.say(ident, text)
        started = said.wait(ident, ("started", *FINAL_EVENTS))
        assert outcome(started) == ("started", "deepgram", False)
        wait_until_played(capture, played_before + RATE // 2)

        if fault == "sigkill":
            fake_process.sigkill()
        else:
            assert fake_process.command(fault)["affected"] == 1  # the daemon's socket, and only it
        # The fault landed mid-announcement: not all of it had been played, nor had it ended.
        assert played_samples(capture) - played_before < len(expected), fault
        assert not [e for e in said.of(ident) if e["event"] in FINAL_EVENTS], fault
        if fault == "sigkill":
            time.sleep(1.0)  # the server is down for a second, then back on the same port
            fake_process.start()

        finished = said.final(ident, timeout=40)
        heard = np.frombuffer(capture.path.read_bytes(), dtype="<i2")
        assert lines_since(daemon, mark, REPLAY_LINE), (fault, daemon.log_lines[mark:])
        if fault == "sigkill":
            # The server is down when the replay asks for a socket: the reconnect is refused, and
            # rather than keep the listener waiting in silence for connect_wait_s, espeak-ng speaks
            # it at once, from its start.
            assert outcome(finished) == ("finished", "espeak", True), daemon.log_lines[mark:]
            fallback = lines_since(daemon, mark, f"voice deepgram failed halfway on {ident}")
            assert len(fallback) == 1, daemon.log_lines[mark:]
            assert "deepgram is unavailable" in fallback[0], fallback
            assert ends_with_espeak(heard, text)
        else:
            # The server is still up: the announcement is spoken again, all of it, on a new
            # socket, and the last thing heard is every sample of it.
            assert outcome(finished) == ("finished", "deepgram", False), daemon.log_lines[mark:]
            assert not lines_since(daemon, mark, "failed halfway"), daemon.log_lines[mark:]
            assert np.array_equal(heard[-len(expected) :], expected), fault
            assert fake_process.sockets() == (accepted_before + 1, 1)  # one fresh socket, no more

    assert_healthy(daemon, said, fake_process.sockets, "after-faults")
    said.assert_each_ended_once()
    assert not [line for line in daemon.log_lines if line.startswith(("ERROR", "CRITICAL"))]


# --- the server refuses handshakes ---------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 429, 503])
def test_a_refusing_server_degrades_to_espeak_with_bounded_retries_then_recovers(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    tmp_path: Path,
    status: int,
) -> None:
    key = f"dg-secret-{uuid.uuid4().hex}"
    wrong_key = f"dg-wrong-{uuid.uuid4().hex}"
    key_file = tmp_path / "deepgram_api_key"
    # 401: the server refuses a wrong key, as Deepgram does; 429 and 503: it refuses everyone.
    key_file.write_text(wrong_key if status == 401 else key)
    refusing = None if status == 401 else status
    options = FakeDeepgramOptions(api_key=key, first_byte_s=0.02, handshake_status=refusing)
    with FakeDeepgramThread(options) as fake:
        server = fake.server
        daemon = cloud_daemon(make_daemon, broker, server.url, f'api_key_file = "{key_file}"\n')
        daemon.start()
        said = Announcements(probe, node_id)
        wait_for(lambda: server.refused >= 1, 15, "the first refused handshake")
        first_refusal = time.monotonic()

        # While refused: espeak-ng speaks, and the events say the voice is degraded.
        said.say("meanwhile", "The cloud voice is refused; the local one speaks.")
        started = said.wait("meanwhile", ("started", *FINAL_EVENTS))
        assert outcome(started) == ("started", "espeak", True)
        assert said.final("meanwhile")["event"] == "finished"

        # Bounded retries over a few seconds: a backoff, not a hot loop.
        time.sleep(max(0.0, first_refusal + 4.0 - time.monotonic()))
        refused = server.refused
        assert server.connections == 0
        assert {refusal[0] for refusal in server.refusals} == {status}
        errors = [line for line in daemon.log_lines if line.startswith("ERROR")]
        refusals_logged = [line for line in daemon.log_lines if "cannot connect" in line]
        if status == 401:
            assert refused == 1  # the next try is minutes away: a person must fix the key
            assert len(errors) == 1, errors
            assert "HTTP 401 INVALID_AUTH: the API key was refused" in errors[0]
        else:
            assert 2 <= refused <= 8, refused  # 0, 0.125-0.25 s, then doubling: 5 or 6 in 4 s
            assert errors == []
            name = "TOO_MANY_REQUESTS" if status == 429 else "SERVICE_UNAVAILABLE"
            assert refusals_logged and all(
                line.startswith("WARNING") and f"HTTP {status} {name}" in line
                for line in refusals_logged
            ), refusals_logged
            assert all("reconnecting in" in line for line in refusals_logged)

        # The server accepts again: for 429/503 by itself; for 401 once a person fixes the key
        # in the file and reloads the daemon.
        mark = len(daemon.log_lines)
        if status == 401:
            key_file.write_text(key)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            daemon.wait_for_log("herald: configuration reloaded")
            recovery_s = 15.0
        else:
            server.set_handshake_status(None)
            delays = [
                float(m.group(1))
                for line in daemon.log_lines
                if (m := re.search(r"reconnecting in ([\d.]+) s", line))
            ]
            recovery_s = delays[-1] + 10.0  # the backoff already announced, and some slack
        wait_for(lambda: server.open_connections == 1, recovery_s, "a warm socket again")
        assert server.connections == 1
        # The server counts the socket a moment before the daemon logs it: wait for the line.
        wait_for(
            lambda: any(SOCKET_OPEN.search(line) for line in daemon.log_lines[mark:]),
            5,
            "the daemon to log its open socket",
        )

        assert_healthy(
            daemon, said, lambda: (server.connections, server.open_connections), "recovered"
        )
        said.assert_each_ended_once()
        # Each refusal was said once, and never with the key in it.
        logged = [line for line in daemon.log_lines if "cannot connect" in line]
        assert len(logged) == server.refused
        assert not [line for line in daemon.log_lines if key in line or wrong_key in line]
        assert len([line for line in daemon.log_lines if line.startswith("ERROR")]) == (
            1 if status == 401 else 0
        )
