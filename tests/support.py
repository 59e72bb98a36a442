"""Real peers for the tests: a mosquitto broker, ALSA capture devices, a daemon process, MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import http.server
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as paho
import soxr
from paho.mqtt.enums import CallbackAPIVersion

from herald.voice.base import Voice

REPO = Path(__file__).resolve().parent.parent
RATE = 48000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (with a bound) until condition() holds; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --- mosquitto --------------------------------------------------------------------------------


@dataclass
class Broker:
    """A real mosquitto on a loopback port, started and stopped by the tests."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    persistent: bool = False  # keep sessions and queued messages across a restart
    listener_options: str = "allow_anonymous true\n"  # e.g. TLS files, a password file
    global_options: str = ""  # before everything else, e.g. per_listener_settings

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        persistence = (
            f"persistence true\npersistence_location {self.workdir}/\n"
            if self.persistent
            else "persistence false\n"
        )
        # A test may send thousands of events in a burst: let the broker queue them all for a
        # subscriber (its default drops what is beyond 1000 queued per client).
        conf.write_text(
            # Started by root, mosquitto would drop to its own user and could not read the
            # test's files; for anyone else `user` changes nothing.
            f"{self.global_options}"
            f"user {getpass.getuser()}\nmax_queued_messages 1000000\n"
            f"listener {self.port} 127.0.0.1\n{self.listener_options}{persistence}"
        )
        log = (self.workdir / f"mosquitto-{self.port}.log").open("ab")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        wait_for(self._accepts, 10, f"mosquitto on port {self.port}")

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mosquitto exited with {self.process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
            return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self.process = None


class MqttProbe:
    """A plain paho client for tests: publishes, and records every message on its topics."""

    def __init__(self, broker: Broker, *topics: str, persistent: bool = False) -> None:
        """persistent: a session the broker keeps (with what arrives meanwhile) while the
        probe is cut off, e.g. across a broker restart; paho reconnects on its own."""
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4()}",
            clean_session=not persistent,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._subscribed = threading.Event()
        self._topics = topics
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if topics:
            assert self._subscribed.wait(10), "probe could not subscribe"

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def publish_many(self, messages: Iterable[tuple[str, bytes | str]]) -> None:
        """Publish at QoS 1 as fast as paho takes them; return once the broker has them all."""
        sent = [self._client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in sent:
            info.wait_for_publish(60)

    def seen_on(self, topic: str) -> list[bytes]:
        """Every payload received on `topic` so far, in order (taking what has arrived)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.seen.append(self.messages.get_nowait())
        return [payload for seen_topic, payload in self.seen if seen_topic == topic]

    def next_json(self, timeout: float = 30) -> dict[str, Any]:
        topic, payload = self.messages.get(timeout=timeout)
        self.seen.append((topic, payload))
        result: dict[str, Any] = json.loads(payload)
        return result

    def events_until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Collect JSON messages until done(collected) holds."""
        deadline = time.monotonic() + timeout
        collected: list[dict[str, Any]] = []
        while not done(collected):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events so far: {collected}")
            try:
                collected.append(self.next_json(left))
            except queue.Empty:
                continue
        return collected

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- events: what became of each announcement ---------------------------------------------------

Events = list[dict[str, Any]]
FINAL_EVENTS = ("finished", "failed", "rejected", "expired", "dropped")


def is_final(event: dict[str, Any]) -> bool:
    """The event that settles an announcement's fate (a requeued preemption does not)."""
    return event["event"] in FINAL_EVENTS or (
        event["event"] == "preempted" and not event["requeued"]
    )


def distinct(events: Events) -> Events:
    """The events without the copies MQTT's at-least-once delivery adds.

    An event the broker had not acknowledged when the connection dropped (or Herald crashed) is
    sent again, `ts` and all: that copy is the same event, and is kept once.
    """
    seen: set[tuple[Any, str, Any]] = set()
    kept: Events = []
    for event in events:
        key = (event.get("id"), event["event"], event.get("ts"))
        if key not in seen:
            seen.add(key)
            kept.append(event)
    return kept


def fates(events: Events) -> dict[str, list[str]]:
    """Each announcement id and the final events it got, in order (each event counted once)."""
    found: dict[str, list[str]] = {}
    for event in distinct(events):
        if is_final(event):
            found.setdefault(event["id"], []).append(event["event"])
    return found


def settled(ids: Iterable[str]) -> Callable[[Events], bool]:
    """Every one of these ids has its final event."""
    wanted = set(ids)
    return lambda events: wanted <= fates(events).keys()


def got(kind: str, ident: str) -> Callable[[Events], bool]:
    return lambda events: any(e["event"] == kind and e.get("id") == ident for e in events)


def finished_or_failed(ident: str) -> Callable[[Events], bool]:
    return settled([ident])


# --- systemd ---------------------------------------------------------------------------------


class NotifyListener:
    """Stands in for systemd's notification socket ($NOTIFY_SOCKET): a thread receives what the
    daemon tells it and stamps each message with time.monotonic() as it arrives (so a gap in
    the watchdog pings shows even while the sender's event loop is blocked)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._arrived = threading.Condition()
        self._open = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._arrived:
                self.messages.append((time.monotonic(), fields))
                self._arrived.notify_all()

    def fields(self) -> list[dict[str, str]]:
        """Every message received so far, as its fields."""
        return [fields for _, fields in list(self.messages)]

    def times_of(self, key: str) -> list[float]:
        return [at for at, fields in list(self.messages) if key in fields]

    def until(self, key: str, timeout: float) -> dict[str, str]:
        """The first message with this field, waiting (bounded) for it."""
        with self._arrived:
            if self._arrived.wait_for(lambda: bool(self.times_of(key)), timeout):
                return next(fields for fields in self.fields() if key in fields)
        raise AssertionError(f"no {key} in {self.messages}")

    def close(self) -> None:
        self._open = False
        self._thread.join(5)
        self._sock.close()


# --- ALSA ---------------------------------------------------------------------------------------

ASOUNDRC = """
# A PCM that stores everything played on it in the file named by its argument.
pcm.herald_capture {
    @args [ FILE ]
    @args.FILE { type string default "/dev/null" }
    type file
    slave.pcm "null"
    file $FILE
    format "raw"
}

# A PCM paced in real time: a PulseAudio null sink, recorded from its monitor. It reports
# underruns like a sound card does.
pcm.herald_paced {
    type pulse
    server "unix:PULSE_SOCKET"
    handle_underrun true
}

# Rooms in step, on one clock: each room plays into its own sink (`herald_room:SINK=room1`),
# and every room's sink is one channel of a single null sink, recorded as one stream.
pcm.herald_room {
    @args [ SINK ]
    @args.SINK { type string default "room1" }
    type pulse
    server "unix:ROOMS_SOCKET"
    device $SINK
    handle_underrun true
}
"""
ROOMS = 4  # sinks room1..room4 on the rooms server


def write_alsa_config(config_home: Path) -> None:
    (config_home / "alsa").mkdir(parents=True, exist_ok=True)
    text = ASOUNDRC.replace("PULSE_SOCKET", str(pulse_socket(config_home))).replace(
        "ROOMS_SOCKET", str(pulse_socket(config_home, "pulse-rooms"))
    )
    (config_home / "alsa" / "asoundrc").write_text(text)


def pulse_socket(config_home: Path, name: str = "pulse-native") -> Path:
    return config_home / name


def room_sinks(rooms: int = ROOMS) -> str:
    """A null sink of `rooms` channels, each a mono sink of its own: room1, room2, ..."""
    positions = ",".join(f"aux{n}" for n in range(rooms))
    lines = [
        f"load-module module-null-sink sink_name=rooms rate={RATE} channels={rooms} "
        f"channel_map={positions}"
    ]
    for n in range(rooms):
        lines.append(
            f"load-module module-remap-sink sink_name=room{n + 1} master=rooms channels=1 "
            f"master_channel_map=aux{n} channel_map=mono remix=no"
        )
    return "\n".join(lines) + "\n"


@dataclass
class PulseServer:
    """A PulseAudio daemon with one null sink; `record()` captures what reaches the sink."""

    config_home: Path
    process: subprocess.Popen[bytes] | None = None
    name: str = "pulse-native"  # its socket's name in config_home
    sinks: str = (
        f"load-module module-null-sink sink_name=herald_sink rate={RATE} channels=1\n"
        "set-default-sink herald_sink\n"
    )

    @property
    def socket(self) -> Path:
        return pulse_socket(self.config_home, self.name)

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        script = self.config_home / f"{self.name}.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            + self.sinks
        )
        runtime = self.config_home / f"{self.name}-runtime"
        runtime.mkdir(exist_ok=True)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
        log = (self.config_home / "pulse.log").open("ab")
        self.process = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1",
             "--use-pid-file=no", "--disallow-exit"],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        wait_for(self.socket.exists, 15, "pulseaudio to start")

    @contextlib.contextmanager
    def record(self, into: Path, sink: str = "herald_sink", channels: int = 1) -> Iterator[Path]:
        """Record a sink's monitor (s16le at RATE) into a file while the block runs; more
        than one channel: the rooms' sink, channel N being room N+1."""
        layout = [f"--channel-map={','.join(f'aux{n}' for n in range(channels))}"]
        with into.open("wb") as file:
            recorder = subprocess.Popen(
                ["parec", "--server", self.server, "-d", f"{sink}.monitor", "--raw",
                 "--format=s16le", f"--rate={RATE}", f"--channels={channels}",
                 "--latency-msec=20", *(layout if channels > 1 else [])],
                stdout=file,
            )  # fmt: skip
            try:
                # The monitor delivers nothing for about 2 s after parec connects, more under
                # load: what plays before then is not recorded. (A fixed 0.3 s wait made the
                # preemption test depend on the daemon taking long enough to start speaking.)
                wait_for(lambda: into.stat().st_size > 0, 20, "parec to record")
                yield into
            finally:
                recorder.terminate()
                recorder.wait(5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


@dataclass
class Capture:
    """An ALSA device backed by a raw file: what Herald plays is what the file holds."""

    path: Path
    channels: int = 1

    @property
    def device(self) -> str:
        return f"herald_capture:FILE={self.path}"

    def samples(self) -> npt.NDArray[np.int16]:
        if not self.path.exists():
            return np.zeros(0, dtype=np.int16)
        return np.frombuffer(self.path.read_bytes(), dtype="<i2").astype(np.int16)


def espeak_reference(text: str, rate: int = RATE, voice: str = "en-us", speed: int = 165) -> Any:
    """What espeak-ng says for `text`, resampled to `rate`: the ground truth for captures."""
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", "50"],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout
    data_at = wav.index(b"data") + 8
    source_rate = int.from_bytes(wav[24:28], "little")
    samples = np.frombuffer(wav[data_at:], dtype="<i2").astype(np.int16)
    return soxr.resample(samples, source_rate, rate, "HQ").astype(np.int16)


def heard_chime(name: str, rate: int = RATE) -> npt.NDArray[np.int16]:
    """A built-in chime as the shipped configuration plays it: at -18 LUFS, its peaks limited.

    All but its last few milliseconds, which the limiter still holds when the voice begins
    (they come out in the same place, before the first words); its whole length is
    `len(load_chime(name, rate))`.
    """
    from herald.audio.chimes import load_chime
    from herald.audio.loudness import Levelling, Loudness, Target, VoiceLevels

    levelling = Levelling(Loudness(Target(), VoiceLevels(None), {}), rate)
    return levelling.chime(load_chime(name, rate))


def contains_speech(samples: npt.NDArray[np.int16], rate: int = RATE) -> bool:
    """Speech: loud enough, at least 0.3 s long, with both voiced stretches and pauses."""
    if len(samples) < 0.3 * rate:
        return False
    frame = rate // 50
    frames = samples[: len(samples) // frame * frame].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt((frames**2).mean(axis=1))
    voiced = rms > 500
    return bool(voiced.mean() > 0.2 and (~voiced).any() and rms.max() > 2000)


def similarity(a: npt.NDArray[np.int16], b: npt.NDArray[np.int16]) -> float:
    """Normalised correlation of two signals over their common length (1.0 = identical)."""
    n = min(len(a), len(b))
    x, y = a[:n].astype(np.float64), b[:n].astype(np.float64)
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator else 0.0


# --- the daemon as a process --------------------------------------------------------------------


@dataclass
class DaemonProcess:
    """`herald run` in a subprocess, with its log lines kept for assertions."""

    config_path: Path
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None
    log_lines: list[str] = field(default_factory=list)

    def start(self, wait_until: str = "mqtt: connected") -> None:
        self.log_lines = []  # a restart starts a fresh log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "herald", "run", "--config", str(self.config_path)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        self.wait_for_log(wait_until)

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line.rstrip("\n"))

    def wait_for_log(self, fragment: str, timeout: float = 20) -> None:
        wait_for(
            lambda: any(fragment in line for line in self.log_lines) or not self.alive,
            timeout,
            f"'{fragment}' in the daemon log",
        )
        assert self.alive, "daemon exited:\n" + "\n".join(self.log_lines)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


# [mqtt] lines that let one publisher flood the queue (the per-topic limit would refuse most).
NO_RATE_LIMIT = "rate_per_minute = 100000\nrate_burst = 100000\n"


def rss_kib(daemon: DaemonProcess) -> int:
    """The daemon's resident memory now, in KiB."""
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def daemon_env(config_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(config_home)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HERALD_CONFIG", None)
    return env


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@contextlib.contextmanager
def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.alive:
            daemon.stop()


# --- the fake Deepgram server, for a daemon running in another process ---------------------------


class FakeDeepgramThread:
    """The fake Aura server on an event loop of its own, so synchronous tests can drive it."""

    def __init__(self, options: Any) -> None:
        from tests.fake_deepgram import FakeDeepgram

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server = FakeDeepgram(options)

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> FakeDeepgramThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# --- MPD, for the ducking tests -----------------------------------------------------------------


@dataclass
class MpdServer:
    """A real MPD on loopback (a null output, a software mixer), in `home`; stop and start it
    again on the same port (a player that goes away and comes back)."""

    home: Path
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        (self.home / "music").mkdir(exist_ok=True)
        self.config = self.home / "mpd.conf"
        self.config.write_text(
            f'music_directory "{self.home / "music"}"\nbind_to_address "127.0.0.1"\n'
            f'port "{self.port}"\nstate_file "{self.home / "mpd.state"}"\n'
            'audio_output {\n type "null"\n name "silence"\n mixer_type "software"\n}\n'
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mpd", "--no-daemon", "--stderr", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=(self.home / "mpd.log").open("ab"),
        )  # fmt: skip
        wait_for(lambda: port_answers(self.port), 15, "mpd to listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@dataclass
class SnapServer:
    """A real snapserver (a pipe source, its control on loopback) with one snapclient, whose
    `--hostID` is `client`, playing into nothing."""

    home: Path
    client: str = "room1"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.control, self._stream = free_port(), free_port()
        self.config = self.home / "snapserver.conf"
        self.config.write_text(
            f"[server]\ndatadir = {self.home}\n[http]\nenabled = false\n"
            f"[tcp]\nenabled = true\nbind_to_address = 127.0.0.1\nport = {self.control}\n"
            f"[stream]\nbind_to_address = 127.0.0.1\nport = {self._stream}\n"
            f"source = pipe://{self.home / 'fifo'}?name=default\n[logging]\nsink = null\n"
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.control}"

    def start(self) -> None:
        """Both running, and the client known to the server."""
        with (self.home / "snapcast.log").open("ab") as log:
            server = ["snapserver", "-c", str(self.config)]
            self.processes.append(subprocess.Popen(server, stdout=log, stderr=log))
            wait_for(lambda: port_answers(self.control), 15, "snapserver's control")
            client = ["snapclient", "-h", "127.0.0.1", "-p", str(self._stream),
                      "--player", "file:filename=null", "--hostID", self.client,
                      "--logsink", "null"]  # fmt: skip
            self.processes.append(subprocess.Popen(client, stdout=subprocess.DEVNULL, stderr=log))
        wait_for(lambda: snap_volume(self.address, self.client) is not None, 15, "snapclient")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        self.processes.clear()


def snap_call(address: str, method: str, params: dict[str, Any] | None = None) -> Any:
    """One JSON-RPC call to a snapserver's control; its result (notifications skipped)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        stream = conn.makefile("rw", encoding="utf-8")
        request = {"id": 7, "jsonrpc": "2.0", "method": method}
        stream.write(json.dumps({**request, **({"params": params} if params else {})}) + "\r\n")
        stream.flush()
        while True:
            reply = json.loads(stream.readline())
            if reply.get("id") == 7:
                return reply["result"]


def snap_volume(address: str, client: str = "room1") -> int | None:
    """A connected client's volume (0-100), as the snapserver reports it."""
    status = snap_call(address, "Server.GetStatus")
    for group in status["server"]["groups"]:
        for known in group["clients"]:
            if known["id"] == client and known["connected"]:
                return int(known["config"]["volume"]["percent"])
    return None


def snap_set_volume(address: str, percent: int, client: str = "room1") -> None:
    volume = {"muted": False, "percent": percent}
    snap_call(address, "Client.SetVolume", {"id": client, "volume": volume})


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def mpd_command(port: int, command: str) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        stream = conn.makefile("rw")
        stream.readline()  # OK MPD x.y.z
        stream.write(command + "\n")
        stream.flush()
        answer: dict[str, str] = {}
        while (line := stream.readline().strip()) and not line.startswith(("OK", "ACK")):
            key, _, value = line.partition(": ")
            answer[key] = value
        assert not line.startswith("ACK"), line
        return answer


def mpd_volume(address: str) -> int:
    return int(mpd_command(int(address.rpartition(":")[2]), "status")["volume"])


# --- media over HTTP (what Home Assistant hands an ESPHome media player) -----------------------


def tone_wav(hz: float, seconds: float, rate: int = RATE) -> bytes:
    """A 16-bit mono WAV of a sine at `hz`."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * hz * t) * 12000).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


@dataclass
class MediaServer:
    """An HTTP server on loopback serving one WAV at /tone.wav (anything else: 404)."""

    url: str
    user_agents: list[str] = field(default_factory=list)  # of every request, in order


@contextlib.contextmanager
def media_server(body: bytes) -> Iterator[MediaServer]:
    served: list[MediaServer] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            served[0].user_agents.append(self.headers.get("User-Agent", ""))
            if self.path.split("?")[0] != "/tone.wav":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.append(MediaServer(f"http://127.0.0.1:{server.server_address[1]}"))
    threading.Thread(target=server.serve_forever, name="media", daemon=True).start()
    try:
        yield served[0]
    finally:
        server.shutdown()
        server.server_close()


# --- the voice tests: a voice kept warm, what it says, a bounded run -----------------------------

AnyVoice = TypeVar("AnyVoice", bound=Voice)
Result = TypeVar("Result")


@contextlib.asynccontextmanager
async def warm(voice: AnyVoice) -> AsyncIterator[AnyVoice]:
    """The voice with its upkeep (`voice.run()`, a warm socket) running; cancelled and awaited
    when the block ends."""
    keeping = asyncio.create_task(voice.run())
    try:
        yield voice
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping


async def speak(voice: Voice, text: str) -> bytes:
    """All the voice says for `text`, as linear16 little-endian bytes."""
    chunks = [chunk async for chunk in voice.stream(text)]
    return b"".join(chunk.astype("<i2").tobytes() for chunk in chunks)


async def speak_interrupted(
    voice: Voice, text: str, after_chunks: int, interrupt: Callable[[], Awaitable[None]]
) -> bytes:
    """All the voice says for `text`, with `interrupt()` (the fake breaking the socket, say)
    awaited once the first `after_chunks` chunks have come."""
    received = []
    async for chunk in voice.stream(text):
        received.append(chunk.astype("<i2").tobytes())
        if len(received) == after_chunks:
            await interrupt()
    return b"".join(received)


def run(coroutine: Coroutine[Any, Any, Result]) -> Result:
    """Run a test's scenario on a fresh event loop, bounded to a minute."""
    return asyncio.run(asyncio.wait_for(coroutine, 60))


# --- the daemon's output, for the end-to-end tests -----------------------------------------------

PERIOD = 960  # 20 ms at 48 kHz: every announcement ends on a whole period


def padded(audio: bytes) -> npt.NDArray[np.int16]:
    """Linear16 audio as the daemon plays it: with silence after it up to a whole period."""
    samples = np.frombuffer(audio, dtype="<i2")
    return np.concatenate([samples, np.zeros(-len(samples) % PERIOD, dtype=np.int16)])
