"""Part 4: footprint: startup time to READY, memory, and CPU while idle.

- Startup: the daemon is started with $NOTIFY_SOCKET naming a datagram socket of the
  benchmark's; the time from just before the process is spawned to READY=1 arriving, and to its
  log saying the warm socket is open. Repeated, then the last one keeps running.
- Memory: VmRSS from /proc/<pid>/status a moment after start, and after N announcements
  (VmHWM, the peak, too).
- Idle: utime+stime from /proc/<pid>/stat (10 ms ticks), the threads' schedstat run time (ns)
  and their context switches (how often a thread woke), over a window with nothing to say.
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, field

from bench.common import (
    FakeProcess,
    HeraldProcess,
    Mqtt,
    Summary,
    Workspace,
    context_switches,
    cpu_ns,
    cpu_seconds,
    log,
    memory_kib,
)
from bench.settings import Settings

BATCH = 25  # announcements published at once, then waited for (the queue holds 100)
SETTLE_S = 2.0


@dataclass
class FootprintResult:
    ready_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    rss_start_kib: int = 0
    rss_after_kib: int = 0
    hwm_after_kib: int = 0
    announcements: int = 0
    failed: int = 0
    idle_s: float = 0.0
    idle_cpu_ms: float = 0.0  # from /proc/<pid>/stat
    idle_cpu_ns: int | None = None  # from schedstat
    idle_wakeups: int = 0
    busy_cpu_ms: float = 0.0  # during the announcements
    busy_s: float = 0.0

    @property
    def ready(self) -> Summary | None:
        return Summary.of(self.ready_ms)

    @property
    def warm(self) -> Summary | None:
        return Summary.of(self.warm_ms)


class NotifySocket:
    """A datagram socket standing in for systemd's: when READY=1 arrives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()
        raise RuntimeError("the daemon never told its notify socket READY=1")

    def close(self) -> None:
        self.sock.close()


def run(ws: Workspace, settings: Settings, rng: random.Random) -> FootprintResult:
    result = FootprintResult(idle_s=settings.idle_s)
    fake = FakeProcess(ws, "footprint", settings.first_byte_ms, settings.round_trip_ms).start()
    # The file PCM of the tests, writing to /dev/null: the daemon's output costs what it costs.
    herald = HeraldProcess(ws, "footprint", "herald_capture", fake.url)
    mqtt: Mqtt | None = None
    try:
        for k in range(settings.startups):
            notify = NotifySocket(str(ws.root / f"notify-{k}"))
            try:
                herald.start(wait_until=None, NOTIFY_SOCKET=notify.path)
                result.ready_ms.append((notify.wait_ready(30) - herald.started_at) * 1000)
                warm_at = herald.wait_log("deepgram: socket #1 open")
                result.warm_ms.append((warm_at - herald.started_at) * 1000)
            finally:
                notify.close()
            if k < settings.startups - 1:
                herald.stop()
        time.sleep(SETTLE_S)
        pid = herald.pid
        result.rss_start_kib = memory_kib(pid)["VmRSS"]

        log(f"footprint: {settings.idle_s:.0f} s idle")
        cpu0, ns0, switches0 = cpu_seconds(pid), cpu_ns(pid), context_switches(pid)
        time.sleep(settings.idle_s)
        cpu1, ns1, switches1 = cpu_seconds(pid), cpu_ns(pid), context_switches(pid)
        result.idle_cpu_ms = (cpu1 - cpu0) * 1000
        result.idle_cpu_ns = None if ns0 is None or ns1 is None else ns1 - ns0
        result.idle_wakeups = switches1 - switches0

        log(f"footprint: {settings.footprint_count} announcements")
        mqtt = Mqtt(ws.broker, herald.events_topic)
        busy0, began = cpu_seconds(pid), time.monotonic()
        _announce(mqtt, herald, settings.footprint_count, result)
        result.busy_cpu_ms = (cpu_seconds(pid) - busy0) * 1000
        result.busy_s = time.monotonic() - began
        time.sleep(SETTLE_S)
        memory = memory_kib(pid)
        result.rss_after_kib, result.hwm_after_kib = memory["VmRSS"], memory["VmHWM"]
    finally:
        if mqtt is not None:
            mqtt.close()
        herald.stop()
        fake.stop()
    return result


def _announce(mqtt: Mqtt, herald: HeraldProcess, count: int, result: FootprintResult) -> None:
    """`count` ordinary announcements (default chime), BATCH at a time."""
    for first in range(0, count, BATCH):
        idents = [f"footprint-{i}" for i in range(first, min(first + BATCH, count))]
        for ident in idents:
            text = f"Footprint announcement {ident.split('-')[1]}."
            mqtt.publish(herald.say_topic, {"text": text, "id": ident})
        finals = mqtt.wait_finals(idents, 120)
        for ident in idents:
            final = finals.get(ident)
            result.announcements += 1
            if final is None or final["event"] != "finished" or final.get("degraded"):
                result.failed += 1
