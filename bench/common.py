"""What the parts of the benchmark share: the processes it starts, and the ear that times sound.

The ear is an ALSA `file` PCM whose file is a FIFO: whatever a player writes to that PCM comes
out of the FIFO, where a thread of the benchmark reads it and notes the time each read returned.
The PCM's slave is `null`, which takes every period at once, so the FIFO sees the audio as fast
as the player writes it. (alsa-lib's file plugin writes a period to the file only once a whole
buffer more has been written after it; the report says what that costs.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import REPO, Broker, MqttProbe, daemon_env, write_alsa_config

API_KEY = "bench-key"  # the fake's key; the daemon and the client get it from $DEEPGRAM_API_KEY
SOUND_THRESHOLD = 64  # a sample beyond +-64 (-54 dBFS) is sound; silence is exactly 0
PIPE_SIZE = 1 << 20  # room for 10 s of audio in the FIFO, so a player never waits for the ear
FINAL_EVENTS = ("finished", "failed", "rejected", "expired", "dropped")

FIFO_PCM = """
# The benchmark's ear: everything played on this PCM goes to the FIFO named by FILE.
pcm.bench_fifo {
    @args [ FILE ]
    @args.FILE { type string default "/dev/null" }
    type file
    slave.pcm "null"
    file $FILE
    format "raw"
}
"""


def log(message: str) -> None:
    """Progress on stderr (the report goes to a file)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- numbers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Percentiles of one measure, in its own unit (milliseconds unless a table says otherwise)."""

    n: int
    p50: float
    p95: float
    max: float
    min: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary | None:
        data = np.asarray(list(values), dtype=np.float64)
        if data.size == 0:
            return None
        p50, p95 = np.percentile(data, [50, 95])
        return cls(int(data.size), float(p50), float(p95), float(np.max(data)), float(np.min(data)))


# --- the workspace: files, the ALSA config, the broker -----------------------------------------


@dataclass
class Workspace:
    """A private directory with an asoundrc, an empty credentials dir, and a private mosquitto."""

    root: Path
    broker: Broker

    @classmethod
    def create(cls, root: Path) -> Workspace:
        config_home = root / "xdg"
        write_alsa_config(config_home)  # herald_capture and herald_paced, as the tests have them
        with (config_home / "alsa" / "asoundrc").open("a") as asoundrc:
            asoundrc.write(FIFO_PCM)
        (root / "no-credentials").mkdir()
        broker = Broker(root / "mosquitto")
        broker.workdir.mkdir()
        broker.start()
        return cls(root, broker)

    @property
    def config_home(self) -> Path:
        return self.root / "xdg"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for the daemon and the client: the private ALSA config, no secrets
        of this machine, no systemd of the benchmark's own."""
        env = daemon_env(self.config_home)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            env.pop(name, None)
        env["HERALD_CREDENTIALS_DIR"] = str(self.root / "no-credentials")
        env["DEEPGRAM_API_KEY"] = API_KEY
        env.update(extra)
        return env

    def close(self) -> None:
        self.broker.stop()


# --- the ear ------------------------------------------------------------------------------------


class FifoCapture:
    """A FIFO behind an ALSA file PCM, read by a thread that notes when sound arrives.

    `arm()` then publish, then `wait_heard()`: the time the first read holding a sample louder
    than SOUND_THRESHOLD returned. `wait_quiet()` first, so the tail of the previous sound is not
    taken for the next one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._armed = False
        self._heard_at: float | None = None
        self._heard = threading.Event()
        self._last_data_at = 0.0
        self._carry = b""
        self.bytes_read = 0
        self._fd = -1
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    @property
    def device(self) -> str:
        return f"bench_fifo:FILE={self.path}"

    def start(self) -> FifoCapture:
        os.mkfifo(self.path)
        # Read-write: opening never blocks, and the player's open for writing finds a reader.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"ear-{self.path.name}", daemon=True)
        self._thread.start()
        return self

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            self._heard_at = None
            self._heard.clear()

    def wait_heard(self, timeout: float) -> float | None:
        self._heard.wait(timeout)
        with self._lock:
            self._armed = False
            return self._heard_at

    def wait_quiet(self, quiet_s: float = 0.03, timeout: float = 10.0) -> None:
        """Until nothing has arrived for `quiet_s` (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            idle = time.monotonic() - self._last_data_at
            if idle >= quiet_s:
                return
            time.sleep(quiet_s - idle)

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            data = os.read(self._fd, PIPE_SIZE)
            now = time.monotonic()
            self._last_data_at = now
            self.bytes_read += len(data)
            data, self._carry = self._carry + data, b""
            if len(data) % 2:
                data, self._carry = data[:-1], data[-1:]
            with self._lock:
                if not self._armed:
                    continue
            samples = np.frombuffer(data, dtype="<i2")
            if samples.size and int(np.abs(samples.astype(np.int32)).max()) > SOUND_THRESHOLD:
                with self._lock:
                    if self._armed:
                        self._armed = False
                        self._heard_at = now
                        self._heard.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)


# --- the fake Deepgram, in a process of its own -------------------------------------------------


@dataclass
class FakeStats:
    """What the fake saw, written by bench/fake_server.py when it stops."""

    connections: int = 0
    close_log: list[tuple[int, str]] = field(default_factory=list)
    handshakes: list[tuple[float, float]] = field(default_factory=list)  # monotonic start, end
    flushes: list[float] = field(default_factory=list)  # monotonic time each Flush arrived

    @classmethod
    def load(cls, path: Path) -> FakeStats:
        data = json.loads(path.read_text())
        return cls(
            connections=data["connections"],
            close_log=[(int(code), str(reason)) for code, reason in data["close_log"]],
            handshakes=[(float(a), float(b)) for a, b in data["handshakes"]],
            flushes=[float(at) for at in data["flushes"]],
        )


def spawn_announcing(
    argv: list[str], env: dict[str, str], log: Path, what: str
) -> tuple[subprocess.Popen[str], str]:
    """Start a helper process whose first line on stdout says it is ready; that line.

    Its stderr goes to `log`, which the error names when the process does not start.
    """
    with log.open("ab") as errors:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
    assert process.stdout is not None
    first = process.stdout.readline().strip()
    if not first:
        process.kill()
        process.wait(5)
        raise RuntimeError(f"{what} did not start; see {log}")
    return process, first


class FakeProcess:
    """`python -m bench.fake_server`: the tests' fake Aura server, which records its handshakes."""

    def __init__(
        self,
        ws: Workspace,
        name: str,
        first_byte_ms: float,
        round_trip_ms: float,
        *,
        pace: float = 0.0,
        lifetime_s: float = 3600.0,
    ) -> None:
        self.stats_path = ws.root / f"fake-{name}.json"
        self._argv = [
            sys.executable, "-m", "bench.fake_server", "--stats", str(self.stats_path),
            "--port", "0", "--api-key", API_KEY,
            "--first-byte-ms", str(first_byte_ms), "--round-trip-ms", str(round_trip_ms),
            "--pace", str(pace), "--lifetime-s", str(lifetime_s),
            # The benchmark speaks far more often than a home does: it measures latency, so
            # the per-minute limits are lifted here and in the daemon's config alike.
            "--flushes-per-minute", "1000000", "--chars-per-minute", "1000000000",
        ]  # fmt: skip
        self._env = ws.env()
        self._log = ws.root / f"fake-{name}.log"
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> FakeProcess:
        self.process, self.url = spawn_announcing(self._argv, self._env, self._log, "the fake")
        if not self.url.startswith("ws://"):
            raise RuntimeError(f"the fake said {self.url!r}, not its URL; see {self._log}")
        return self

    def stop(self) -> FakeStats:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            self.process.wait(15)
            self.process = None
        return FakeStats.load(self.stats_path)


# --- the daemon ---------------------------------------------------------------------------------


class HeraldProcess:
    """`python -m herald run` with a config of the benchmark's, its log lines timestamped."""

    def __init__(
        self,
        ws: Workspace,
        name: str,
        device: str,
        fake_url: str,
        *,
        max_age_s: float | None = None,
        extra: str = "",
    ) -> None:
        self.node_id = f"bench-{name}"
        self.config_path = ws.root / f"herald-{name}.toml"
        age = f"max_age_s = {max_age_s}\n" if max_age_s is not None else ""
        self.config_path.write_text(
            f'node_id = "{self.node_id}"\nstate_dir = "{ws.root / f"state-{name}"}"\n'
            f'[mqtt]\nhost = "{ws.broker.host}"\nport = {ws.broker.port}\nreconnect_max_s = 1\n'
            "rate_per_minute = 100000\nrate_burst = 100000\n"
            '[voice]\nengines = ["deepgram", "espeak"]\n'
            f'[voice.deepgram]\nurl = "{fake_url}"\n'
            f"chars_per_minute = 1000000\nflushes_per_minute = 1000\n{age}"
            f'[audio]\ndevice = "{device}"\n' + extra
        )
        self.env = ws.env()
        self.process: subprocess.Popen[str] | None = None
        self.log_lines: list[tuple[float, str]] = []
        self.started_at = 0.0

    @property
    def say_topic(self) -> str:
        return f"herald/{self.node_id}/say"

    @property
    def events_topic(self) -> str:
        return f"herald/{self.node_id}/events"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, wait_until: str | None = "herald: ready", **env: str) -> HeraldProcess:
        self.log_lines = []
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "herald", "run", "--config", str(self.config_path)],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        if wait_until is not None:
            self.wait_log(wait_until)
        return self

    def _read_log(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_log(self, fragment: str, timeout: float = 30.0) -> float:
        """When the first log line holding `fragment` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.log_lines):
                if fragment in line:
                    return at
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("the daemon exited:\n" + "\n".join(self.lines()))
            time.sleep(0.01)
        raise RuntimeError(f"no '{fragment}' in the daemon's log:\n" + "\n".join(self.lines()))

    def lines(self, fragment: str = "") -> list[str]:
        return [line for _, line in list(self.log_lines) if fragment in line]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


# --- MQTT ---------------------------------------------------------------------------------------


class Mqtt:
    """The benchmark's MQTT client: publishes (QoS 1, like Home Assistant) and hears replies."""

    def __init__(self, broker: Broker, *topics: str) -> None:
        self._probe = MqttProbe(broker, *topics)

    def publish(self, topic: str, payload: dict[str, Any]) -> float:
        """Publish and return the moment just before publishing (the start of every measure)."""
        data = json.dumps(payload)
        at = time.monotonic()
        self._probe.publish(topic, data)
        return at

    def wait_for(
        self, match: Callable[[str, dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """The first JSON message that matches, dropping the others; None after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload = self._probe.messages.get(timeout=left)
            except queue.Empty:
                return None
            with contextlib.suppress(ValueError):
                message = json.loads(payload)
                if isinstance(message, dict) and match(topic, message):
                    return message
        return None

    def wait_final(self, ident: str, timeout: float = 30.0) -> dict[str, Any] | None:
        """The event that ends announcement `ident` (finished, failed, ...)."""
        return self.wait_for(
            lambda _, e: e.get("id") == ident and e.get("event") in FINAL_EVENTS, timeout
        )

    def wait_finals(self, idents: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The final event of each of `idents` (those that ended within `timeout`)."""
        wanted, finals = set(idents), dict[str, dict[str, Any]]()
        deadline = time.monotonic() + timeout
        while wanted - finals.keys() and (left := deadline - time.monotonic()) > 0:
            event = self.wait_for(
                lambda _, e: e.get("id") in wanted and e.get("event") in FINAL_EVENTS, left
            )
            if event is None:
                break
            finals[event["id"]] = event
        return finals

    def close(self) -> None:
        self._probe.close()


# --- /proc --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line
    return ticks / os.sysconf("SC_CLK_TCK")


def _tasks(pid: int) -> list[Path]:
    return list(Path(f"/proc/{pid}/task").iterdir())


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds on a CPU, summed over the threads alive now (/proc/.../schedstat)."""
    total = 0
    try:
        for task in _tasks(pid):
            with contextlib.suppress(FileNotFoundError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return total


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of the threads alive now: how often it woke."""
    total = 0
    for task in _tasks(pid):
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values
