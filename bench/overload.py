"""Part 5: overload (issue 14): long texts, bursts with a signal behind them, and a flood.

Each scenario runs a fresh daemon (espeak-ng alone, local like a Pi without a key; output
`herald_paced`, ALSA's PulseAudio plugin into a null sink that plays in real time) against the
benchmark's mosquitto, with a `NOTIFY_SOCKET` of the benchmark's and `WATCHDOG_USEC` set, so
the daemon pings the watchdog from its event loop as under systemd. Per scenario:

- peak RSS: VmHWM of /proc/<pid>/status (the kernel's high-water mark, so nothing between two
  samples is missed), and the sampled peak of the daemon plus its children (espeak-ng), which
  is closer to what a unit's MemoryMax counts;
- the largest watchdog gap: between two WATCHDOG=1 datagrams, stamped as they arrive, from the
  daemon's READY to the end of the scenario's load (a daemon that stops pinging shows too);
- dropped events: every message published must end in exactly one final event (`finished`,
  `failed`, `rejected`, `expired`, `dropped`, or `preempted` without requeue), counted the
  way tests/support.fates does (a copy resent after a restart, same `ts`, is not a second
  one); missing and extra ones are both dropped. Besides, paho's "Message queue full" lines in
  the daemon's log (each an event paho refused to send);
- signal latency: from the kill(2) to the log line saying the daemon acted on it, and for
  SIGTERM to the process's exit.

Burst and flood messages carry a `ttl`, so what the queue cannot speak expires instead of
keeping the scenario waiting for minutes of real-time speech; the rate limits are lifted, so
a burst reaches the queue instead of being refused at the door.

    .venv/bin/python -m bench.overload --out /tmp/overload    # alone: overload.json and .md
    .venv/bin/python -m bench.run --parts overload            # as part 5 of RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import HeraldProcess, Workspace, log, memory_kib
from bench.settings import Settings
from tests.support import (
    Broker,
    MqttProbe,
    NotifyListener,
    PulseServer,
    fates,
    pulse_socket,
)

PART = "overload"
JSON_NAME = "overload.json"
MARKDOWN_NAME = "overload.md"

# The pass marks of issue 14, and the memory budget.
GAP_LIMIT_S = 5.0  # no watchdog gap over this
NOTICE_LIMIT_S = 1.0  # a signal acted on (logged) within this
EXIT_LIMIT_S = 5.0  # SIGTERM to exit within this (systemd's TimeoutStopSec is 10)
PI_MEMORY_MIB = 512  # a Raspberry Pi Zero 2 W
RSS_BUDGET_MIB = 128  # the MemoryMax proposed for the unit: a quarter of the Pi's memory
EXIT_WAIT_S = 20.0  # a daemon still running this long after SIGTERM is killed
QUEUE_FULL = "Message queue full"  # paho's words when it refuses a publish (its own queue)
TURNED_AWAY = re.compile(r"dropped (\d+) QoS 0 messages")  # the daemon's count of them
WAKEUP_FD = "signal wakeup fd"  # CPython's words when a signal could not be passed on
SAMPLE_S = 0.2  # how often RSS is read


@dataclass(frozen=True)
class Options:
    """What the scenarios do; the defaults take about 2 minutes on a 2-core machine."""

    long_s: float = 20.0  # RSS sampled this long while a long text speaks, before `stop`
    burst: int = 5000  # messages in each burst before a signal
    signal_after_s: float = 0.5  # the signal this long after the burst is at the broker
    flood: int = 40000  # critical messages in the flood
    ttl_s: float = 15.0  # each burst and flood message's ttl
    settle_s: float = 60.0  # the longest wait for final events, after the ttl has run out
    watchdog_usec: int = 2_000_000  # WATCHDOG_USEC: a ping a second, as the tests use
    only: tuple[str, ...] = ()  # scenario names; empty: all

    def with_args(self, args: argparse.Namespace) -> Options:
        """These options with the ones given on the command line."""
        given = {f.name: getattr(args, f"overload_{f.name}", None) for f in fields(self)}
        values = {k: v for k, v in given.items() if v is not None}
        if isinstance(values.get("only"), str):
            values["only"] = tuple(s.strip() for s in values["only"].split(",") if s.strip())
        return replace(self, **values)


SMOKE = Options(long_s=3.0, burst=300, flood=1000, ttl_s=3.0, settle_s=20.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The overload's options, for bench.run's parser and this module's own."""
    defaults = Options()
    group = parser.add_argument_group("overload (part 5)")
    group.add_argument(
        "--overload-long-s",
        type=float,
        help=f"RSS sampled while a long text speaks, s ({defaults.long_s:.0f})",
    )
    group.add_argument("--overload-burst", type=int, help=f"messages per burst ({defaults.burst})")
    group.add_argument("--overload-flood", type=int, help=f"critical messages ({defaults.flood})")
    group.add_argument("--overload-ttl-s", type=float, help=f"their ttl ({defaults.ttl_s:.0f})")
    group.add_argument(
        "--overload-only", help=f"scenarios, comma-separated ({','.join(SCENARIOS)})"
    )


def options_from(argv: Sequence[str], smoke: bool) -> Options:
    """The overload's options from a bench.run command line (its other options ignored)."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", add_help=False)
    add_arguments(parser)
    known, _ = parser.parse_known_args(argv)
    return _checked(parser, (SMOKE if smoke else Options()).with_args(known))


def _checked(parser: argparse.ArgumentParser, options: Options) -> Options:
    if unknown := set(options.only) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return options


# --- what a scenario found ----------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's figures; None where it does not apply or could not be measured."""

    name: str
    what: str
    seconds: float = 0.0
    published: int = 0
    peak_rss_kib: int | None = None  # VmHWM of the daemon
    peak_tree_kib: int | None = None  # the daemon and its children, sampled
    rss_after_kib: int | None = None  # after the load (long texts: after `stop`)
    pings: int = 0
    watchdog_gap_s: float | None = None
    fates: dict[str, int] = field(default_factory=dict)  # final event -> messages
    missing: int = 0  # messages with no final event
    unheard: int = 0  # of those, messages with no event at all
    extra: int = 0  # final events beyond one per message
    queue_full_lines: int = 0  # publishes paho refused: events lost, final or not
    turned_away: int = 0  # QoS 0 messages the daemon dropped at the door, counted in its log
    wakeup_fd_lines: int = 0
    signal: str | None = None
    noticed_s: float | None = None  # signal -> the log line acting on it
    exit_s: float | None = None  # SIGTERM -> the process gone
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # the scenario itself broke (not the daemon's verdict)

    @property
    def dropped(self) -> int:
        """Issue 14's "dropped events": final events missing, or more than one. A QoS 0 message
        turned away at the door (more came than could wait; the daemon's log counts each) was
        never accepted: it has no event, and is not counted here but reported beside."""
        return max(0, self.missing - self.turned_away) + self.extra

    def failures(self) -> list[str]:
        """Which of issue 14's marks this scenario misses (empty: it passes)."""
        misses = []
        if self.problem is not None:
            misses.append("not measured")
        if self.dropped:
            misses.append(f"{self.dropped:,} dropped")
        if self.queue_full_lines:
            misses.append(f"{self.queue_full_lines:,} publishes refused")
        if self.watchdog_gap_s is None or self.watchdog_gap_s > GAP_LIMIT_S:
            misses.append("watchdog gap")
        if self.signal is not None and (self.noticed_s is None or self.noticed_s > NOTICE_LIMIT_S):
            misses.append(f"{self.signal} not acted on within {NOTICE_LIMIT_S:.0f} s")
        if self.exit_s is None and self.signal == "SIGTERM":
            misses.append("did not exit")
        elif self.exit_s is not None and self.exit_s > EXIT_LIMIT_S:
            misses.append(f"exit over {EXIT_LIMIT_S:.0f} s")
        if self.peak_rss_kib is None or self.peak_rss_kib > RSS_BUDGET_MIB * 1024:
            misses.append(f"RSS over {RSS_BUDGET_MIB} MiB")
        return misses


@dataclass
class OverloadResult:
    options: Options
    started_utc: str
    scenarios: list[Scenario] = field(default_factory=list)

    @property
    def peak_tree_mib(self) -> float:
        peaks = [s.peak_tree_kib or s.peak_rss_kib or 0 for s in self.scenarios]
        return max(peaks, default=0) / 1024

    def memory_max_mib(self) -> int:
        """What MemoryMax would have to be for every scenario here: the peak of the daemon and
        its children, a quarter more for the page cache and allocator slack, in 32 MiB steps."""
        return max(32, math.ceil(self.peak_tree_mib * 1.25 / 32) * 32)


# --- tools: a fast publisher, the events, the memory ---------------------------------------------


class Publisher:
    """Publishes a burst as fast as the broker takes it, with many messages in flight instead
    of one round trip each (MqttProbe waits for every one)."""

    def __init__(self, broker: Broker) -> None:
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4()}")
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)  # no limit: the burst is the point
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def burst(self, topic: str, payloads: Iterable[str | bytes], qos: int = 1) -> float:
        """Publish them all; when the broker had acknowledged (QoS 0: was sent) the last one."""
        sent = [self._client.publish(topic, payload, qos=qos) for payload in payloads]
        for info in sent:
            info.wait_for_publish(120)
            if not info.is_published():
                raise RuntimeError(f"the broker did not take a message to {topic}")
        return time.monotonic()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class EventLog:
    """Every event the daemon publishes, parsed; read from the probe's queue on demand, so the
    benchmark spends no time on them while it publishes."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self._probe = MqttProbe(broker, topic)
        self.events: list[dict[str, Any]] = []

    def take(self) -> list[dict[str, Any]]:
        """The events that arrived since the last call (all of them are kept in `events`)."""
        new: list[dict[str, Any]] = []
        while True:
            try:
                _, payload = self._probe.messages.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(ValueError):
                event = json.loads(payload)
                if isinstance(event, dict) and "event" in event:
                    new.append(event)
        self.events += new
        return new

    def first(self, kinds: Sequence[str], timeout: float) -> dict[str, Any] | None:
        """The first event of these kinds (already seen or arriving within `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            self.take()
            found = next((e for e in self.events if e["event"] in kinds), None)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def settle(self, ids: Sequence[str], timeout: float) -> bool:
        """Wait until each of `ids` has a final event; False if some still lack one."""
        deadline = time.monotonic() + timeout
        while True:
            self.take()
            if not set(ids) - fates(self.events).keys():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def close(self) -> None:
        self._probe.close()


def _descendants(pid: int) -> list[int]:
    """The process's children, grandchildren, ... (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                with contextlib.suppress(OSError):
                    kids = [int(k) for k in (task / "children").read_text().split()]
                    found += kids
                    todo += kids
    return found


class RssSampler:
    """Reads the daemon's memory every SAMPLE_S in a thread, so the figures survive its exit
    (a process that is gone has no /proc to read) and its children (espeak-ng) are counted."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_hwm_kib: int | None = None
        self.peak_tree_kib: int | None = None
        self.last_rss_kib: int | None = None
        self._lock = threading.Lock()  # the thread and a last reading by the scenario
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        try:
            own = memory_kib(self.pid)
            tree = own["VmRSS"]
        except (OSError, KeyError, ValueError):
            return  # gone (a zombie's status has no VmRSS)
        for child in _descendants(self.pid):
            with contextlib.suppress(OSError, KeyError, ValueError):
                tree += memory_kib(child)["VmRSS"]
        with self._lock:
            self.last_rss_kib = own["VmRSS"]
            self.peak_hwm_kib = max(self.peak_hwm_kib or 0, own["VmHWM"])
            self.peak_tree_kib = max(self.peak_tree_kib or 0, tree)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def largest_gap(pings: Sequence[float], since: float, until: float) -> float:
    """The longest time without a ping from `since` to `until`, counted from the last ping
    before `since` (the daemon pings as its loop starts, just before it says it is ready) and
    to `until` (a daemon that stops pinging has one long gap at the end)."""
    ordered = sorted(pings)
    before = [at for at in ordered if at <= since]
    edges = [before[-1] if before else since]
    edges += [at for at in ordered if since < at <= until] + [until]
    return max(b - a for a, b in itertools.pairwise(edges))


def logged_after(herald: HeraldProcess, fragments: Sequence[str], since: float) -> float | None:
    """When the first log line holding one of `fragments` arrived at or after `since`."""
    for at, line in list(herald.log_lines):
        if at >= since and any(fragment in line for fragment in fragments):
            return at
    return None


def wait_logged(
    herald: HeraldProcess, fragments: Sequence[str], since: float, timeout: float
) -> float | None:
    """As logged_after, waiting (bounded) for the line; None if it never came."""
    deadline = time.monotonic() + timeout
    while (at := logged_after(herald, fragments, since)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return at


def wait_exit(herald: HeraldProcess, since: float) -> float | None:
    """Seconds from `since` until the daemon exited; None (and killed) if it did not in time."""
    process = herald.process
    assert process is not None
    try:
        process.wait(max(0.0, since + EXIT_WAIT_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return None
    return time.monotonic() - since


# --- one daemon under load -----------------------------------------------------------------------


def espeak_config(ws: Workspace, herald: HeraldProcess, name: str) -> str:
    """The daemon's default config but for the broker, the device and the lifted rate limits:
    espeak-ng alone, as the issue's tester ran it (no cloud voice, no key)."""
    return (
        f'node_id = "{herald.node_id}"\nstate_dir = "{ws.root / f"state-{name}"}"\n'
        f'[mqtt]\nhost = "{ws.broker.host}"\nport = {ws.broker.port}\nreconnect_max_s = 1\n'
        "rate_per_minute = 100000\nrate_burst = 100000\n"
        '[voice]\nengines = ["espeak"]\n'
        '[audio]\ndevice = "herald_paced"\n'
    )


@dataclass
class Rig:
    """One daemon with everything that watches it: the watchdog's socket, its events, its RSS."""

    ws: Workspace
    herald: HeraldProcess
    notify: NotifyListener
    events: EventLog
    publisher: Publisher
    options: Options
    sampler: RssSampler | None = None
    ready_at: float = 0.0

    @property
    def say_topic(self) -> str:
        return self.herald.say_topic

    def start(self) -> None:
        """Start (or restart) the daemon with the watchdog on; wait for it to be ready."""
        if self.sampler is not None:
            self.sampler.stop()
        self.herald.start(
            NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC=str(self.options.watchdog_usec)
        )
        self.ready_at = time.monotonic()
        self.sampler = RssSampler(self.herald.pid).start()

    def signal(self, signum: signal.Signals) -> float:
        """Send the daemon a signal; when it was sent."""
        assert self.herald.process is not None
        sent = time.monotonic()
        self.herald.process.send_signal(signum)
        return sent

    def memory(self, scenario: Scenario) -> None:
        """The peaks so far (the sampler keeps them after the daemon exits) and RSS now."""
        assert self.sampler is not None
        self.sampler.sample()
        scenario.peak_rss_kib = self.sampler.peak_hwm_kib
        scenario.peak_tree_kib = self.sampler.peak_tree_kib
        scenario.rss_after_kib = self.sampler.last_rss_kib

    def watchdog(self, scenario: Scenario, until: float) -> None:
        """The watchdog's largest gap from the daemon's READY to `until`."""
        pings = self.notify.times_of("WATCHDOG")
        scenario.pings = sum(self.ready_at <= at <= until for at in pings)
        scenario.watchdog_gap_s = largest_gap(pings, self.ready_at, until)

    def read_log(self, scenario: Scenario) -> None:
        """Count the daemon's telling lines, once per run of it (a restart starts a new log),
        and keep the log in the workspace (see --keep-workdir)."""
        lines = self.herald.lines()
        scenario.queue_full_lines += sum(QUEUE_FULL in line for line in lines)
        scenario.wakeup_fd_lines += sum(WAKEUP_FD in line for line in lines)
        scenario.turned_away += sum(
            int(match[1]) for line in lines if (match := TURNED_AWAY.search(line))
        )
        with (self.ws.root / f"herald-{scenario.name}.log").open("a") as kept:
            kept.write("\n".join([*lines, ""]))

    def account(self, scenario: Scenario, ids: Sequence[str]) -> None:
        """Each message's final events: what became of them, and what is missing or extra."""
        self.events.take()
        found = fates(self.events.events)
        scenario.published = len(ids)
        scenario.fates = dict(Counter(found[i][0] for i in ids if i in found))
        scenario.missing = sum(i not in found for i in ids)
        heard = {e.get("id") for e in self.events.events}
        scenario.unheard = sum(i not in heard for i in ids)
        scenario.extra = sum(len(found[i]) - 1 for i in ids if i in found)


@contextlib.contextmanager
def rig(ws: Workspace, name: str, options: Options) -> Iterator[Rig]:
    """A fresh daemon for one scenario, stopped (and its log counted by the caller) after."""
    # HeraldProcess writes a config for the fake Deepgram (its URL unused here); this part's
    # replaces it before the start.
    herald = HeraldProcess(ws, f"overload-{name}", "herald_paced", "ws://127.0.0.1:9")
    herald.config_path.write_text(espeak_config(ws, herald, name))
    notify = NotifyListener(ws.root / f"notify-{name}")
    events = EventLog(ws.broker, herald.events_topic)
    publisher = Publisher(ws.broker)
    made = Rig(ws, herald, notify, events, publisher, options)
    try:
        made.start()
        yield made
    finally:
        if made.sampler is not None:
            made.sampler.stop()
        herald.stop()
        publisher.close()
        events.close()
        notify.close()


# --- the scenarios -------------------------------------------------------------------------------


def _fill(pieces: Iterable[str], limit: int) -> str:
    """As many of `pieces` as fit in `limit` bytes of UTF-8: under mqtt.max_payload_bytes."""
    taken: list[str] = []
    size = 0
    for piece in pieces:
        size += len(piece.encode())
        if size > limit:
            break
        taken.append(piece)
    return "".join(taken)


def many_short_lines(limit: int = 16_000) -> str:
    """What the issue's tester sent: about 16 KiB of short lines, each a sentence of its own."""
    return _fill((f"Line {n} is short.\n" for n in itertools.count(1)), limit)


def combining_marks(limit: int = 16_000) -> str:
    """About 16 KiB of words whose every letter carries three combining marks (U+0300-U+036F):
    some 7,000 marks, the tester's "thousands of combining characters"."""
    marks = [chr(c) for c in range(0x300, 0x370)]

    def letter(n: int) -> str:
        marked = "warning"[n % 7] + "".join(marks[(3 * n + k) % len(marks)] for k in range(3))
        return marked + ("\n" if n % 28 == 27 else " " if n % 7 == 6 else "")

    return _fill(map(letter, itertools.count()), limit)


def long_text(ws: Workspace, options: Options, name: str, text: str, what: str) -> Scenario:
    """(a) One payload of about 16 KiB, plain text (a `normal` announcement, its chime `soft`):
    the peak while it speaks for `long_s`, then `stop`, then RSS again."""
    scenario = Scenario(name, what)
    with rig(ws, name, options) as r:
        r.publisher.burst(r.say_topic, [text.encode()])
        first = r.events.first(["queued", "rejected"], 30)
        ident = "(no queued event)" if first is None else str(first.get("id"))
        time.sleep(options.long_s)
        stopped = time.monotonic()
        r.publisher.burst(f"herald/{r.herald.node_id}/stop", [b""])
        r.events.settle([ident], 30)
        time.sleep(3.0)  # what the daemon gives back after `stop`, it has given back by now
        r.memory(scenario)
        r.watchdog(scenario, stopped)
        r.account(scenario, [ident])
        r.read_log(scenario)
    return scenario


def burst_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:05d}" for n in range(count)]


def payloads(ids: Sequence[str], ttl_s: float, **fixed: Any) -> Iterator[str]:
    for ident in ids:
        yield json.dumps({"text": f"Message {ident}.", "id": ident, "ttl": ttl_s, **fixed})


def burst_then_signal(
    r: Rig, ids: Sequence[str], options: Options, signum: signal.Signals
) -> tuple[float, float]:
    """Publish the burst, and send `signum` `signal_after_s` after the broker has the last of
    it; when the broker had it, and when the signal was sent."""
    published = r.publisher.burst(r.say_topic, payloads(ids, options.ttl_s))
    time.sleep(max(0.0, published + options.signal_after_s - time.monotonic()))
    return published, r.signal(signum)


def burst_then_sigterm(ws: Workspace, options: Options) -> Scenario:
    """(b) A burst, SIGTERM `signal_after_s` after it is at the broker: the time to the
    "stopping" line and to the exit. Then a restart (same journal, same broker session)
    settles every message, so the count shows whether the stop lost any."""
    name = "burst-sigterm"
    after = options.signal_after_s
    scenario = Scenario(name, f"{options.burst:,} messages, SIGTERM {after:g} s after them")
    scenario.signal = "SIGTERM"
    ids = burst_ids("t", options.burst)
    with rig(ws, name, options) as r:
        _, sent = burst_then_signal(r, ids, options, signal.SIGTERM)
        r.watchdog(scenario, sent)
        scenario.exit_s = wait_exit(r.herald, sent)
        r.memory(scenario)
        scenario.noticed_s = acted_on(r, sent, "herald: stopping", "STOPPING")
        if scenario.exit_s is None:
            scenario.notes.append(f"still running {EXIT_WAIT_S:.0f} s after SIGTERM: killed")
        r.read_log(scenario)
        r.start()  # its log starts afresh
        if not r.events.settle(ids, options.ttl_s + options.settle_s):
            scenario.notes.append("some messages had no final event even after the restart")
        r.account(scenario, ids)
        r.read_log(scenario)
    return scenario


def burst_then_sighup(ws: Workspace, options: Options) -> Scenario:
    """(c) A burst, SIGHUP `signal_after_s` after it: the time to the reload's log line. The
    daemon goes on, and every message must still end in one final event."""
    name = "burst-sighup"
    after = options.signal_after_s
    scenario = Scenario(name, f"{options.burst:,} messages, SIGHUP {after:g} s after them")
    scenario.signal = "SIGHUP"
    ids = burst_ids("h", options.burst)
    with rig(ws, name, options) as r:
        published, sent = burst_then_signal(r, ids, options, signal.SIGHUP)
        reloaded = wait_logged(r.herald, ["configuration reloaded", "reload refused"], sent, 30)
        scenario.noticed_s = acted_on(r, sent, "herald: reloading the configuration", "RELOADING")
        if reloaded is None:
            scenario.notes.append("no reload in the log within 30 s")
        if not r.events.settle(ids, options.ttl_s + options.settle_s):
            scenario.notes.append("some messages had no final event")
        settled = time.monotonic()
        scenario.seconds = settled - published
        scenario.notes += reload_steps(r, sent)
        r.watchdog(scenario, settled)
        r.memory(scenario)
        r.account(scenario, ids)
        r.read_log(scenario)
    return scenario


def acted_on(r: Rig, sent: float, line: str, notification: str) -> float | None:
    """Seconds from the signal to the first sign the daemon acted on it: its log line, or its
    word to systemd (stamped as it arrives, so a backlog in the log's pipe cannot delay it)."""
    told = [at for at in r.notify.times_of(notification) if at >= sent]
    logged = logged_after(r.herald, [line], sent)
    signs = [at for at in (logged, *told[:1]) if at is not None]
    return min(signs) - sent if signs else None


def reload_steps(r: Rig, sent: float) -> list[str]:
    """When systemd would have heard RELOADING=1 and the daemon said it was ready again."""
    steps = []
    reloading = [at for at in r.notify.times_of("RELOADING") if at >= sent]
    if reloading:
        steps.append(f"RELOADING=1 {reloading[0] - sent:.2f} s after SIGHUP")
    ready = wait_logged(r.herald, ["herald: ready"], sent, 30)
    steps.append(
        "never ready again" if ready is None else f"ready again after {ready - sent:.2f} s"
    )
    return steps


def flood(ws: Workspace, options: Options, qos: int) -> Scenario:
    """(d) `flood` critical messages at once: most are refused (the queue holds 100 and none
    is less urgent), each with a `rejected` event; the rest are spoken or expire. At QoS 1 the
    broker holds what the daemon cannot take yet; at QoS 0 (Home Assistant's `mqtt.publish`
    and `mosquitto_pub` default) it sends everything at once, and what cannot wait is turned
    away and counted. A calm SIGTERM after it: its exit time is noted, not judged."""
    name = "flood" if qos == 1 else f"flood-qos{qos}"
    scenario = Scenario(name, f"{options.flood:,} critical messages at once, QoS {qos}")
    ids = burst_ids("f", options.flood)
    with rig(ws, name, options) as r:
        began = time.monotonic()
        messages = payloads(ids, options.ttl_s, priority="critical")
        published = r.publisher.burst(r.say_topic, messages, qos)
        scenario.notes.append(f"published in {published - began:.1f} s")
        if not r.events.settle(ids, options.ttl_s + options.settle_s):
            scenario.notes.append("some messages had no final event")
        settled = time.monotonic()
        scenario.seconds = settled - began
        r.watchdog(scenario, settled)
        r.memory(scenario)
        r.account(scenario, ids)
        calm_exit = wait_exit(r.herald, r.signal(signal.SIGTERM))
        ended = "did not exit" if calm_exit is None else f"exited {calm_exit:.2f} s after it"
        scenario.notes.append(f"SIGTERM after the flood: {ended}")
        r.read_log(scenario)
    return scenario


Runner = Callable[[Workspace, Options], Scenario]
SCENARIOS: dict[str, Runner] = {
    "long-lines": lambda ws, o: long_text(
        ws, o, "long-lines", many_short_lines(), "one 16 KiB text of short lines, `stop` after"
    ),
    "long-combining": lambda ws, o: long_text(
        ws, o, "long-combining", combining_marks(), "16 KiB of combining marks, `stop` after"
    ),
    "burst-sigterm": burst_then_sigterm,
    "burst-sighup": burst_then_sighup,
    "flood": lambda ws, o: flood(ws, o, qos=1),
    "flood-qos0": lambda ws, o: flood(ws, o, qos=0),
}


def run_scenario(ws: Workspace, options: Options, name: str) -> Scenario:
    """One scenario; one that breaks is reported as broken, and the others still run."""
    log(f"overload: {name}")
    began = time.monotonic()
    try:
        scenario = SCENARIOS[name](ws, options)
    except Exception as exc:
        traceback.print_exc()
        return Scenario(
            name, name, time.monotonic() - began, problem=f"{type(exc).__name__}: {exc}"
        )
    scenario.seconds = scenario.seconds or time.monotonic() - began
    log(f"overload: {name}: {verdict(scenario)}")
    return scenario


def run(
    ws: Workspace, settings: Settings, rng: random.Random, options: Options | None = None
) -> OverloadResult:
    """Every scenario (or those in `options.only`), each with a daemon of its own."""
    del rng  # nothing here is random
    options = options or (SMOKE if settings.smoke else Options())
    result = OverloadResult(options, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    pulse = PulseServer(ws.config_home)
    # A socket left by part 2's PulseAudio would pass for this one's before it listens.
    pulse_socket(ws.config_home).unlink(missing_ok=True)
    pulse.start()
    try:
        for name in options.only or tuple(SCENARIOS):
            result.scenarios.append(run_scenario(ws, options, name))
    finally:
        pulse.stop()
    return result


# --- the report ----------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.0f}"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f}"


def verdict(s: Scenario) -> str:
    misses = s.failures()
    return "**pass**" if not misses else "**FAIL**: " + ", ".join(misses)


def _signal_cell(s: Scenario) -> str:
    if s.signal is None:
        return "—"
    acted = "never" if s.noticed_s is None else f"{s.noticed_s:.2f}"
    if s.signal != "SIGTERM":
        return f"{s.signal}: {acted}"
    return f"{s.signal}: {acted}, exit {'never' if s.exit_s is None else f'{s.exit_s:.2f}'}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(result: OverloadResult) -> list[str]:
    """One row per scenario: the four figures of issue 14 and the verdict."""
    header = [
        "scenario",
        "peak RSS MiB (with children)",
        "RSS after MiB",
        "largest watchdog gap s",
        "dropped events",
        "“Message queue full”",
        "signal acted on, s",
        "verdict",
    ]
    rows = [_row(*header), _row(*["---"] * len(header))]
    for s in result.scenarios:
        rows.append(
            _row(
                f"{s.name}: {s.what}",
                f"{_mib(s.peak_rss_kib)} ({_mib(s.peak_tree_kib)})",
                _mib(s.rss_after_kib),
                _s(s.watchdog_gap_s),
                f"{s.dropped:,}",
                f"{s.queue_full_lines:,}",
                _signal_cell(s),
                verdict(s),
            )
        )
    return [*rows, ""]


def _fate_line(s: Scenario) -> str:
    """What became of a scenario's messages, and what else it noted."""
    fated = ", ".join(f"{n:,} `{kind}`" for kind, n in sorted(s.fates.items())) or "none"
    extra = (
        [f"{s.missing:,} without a final event ({s.unheard:,} without any)"] if s.missing else []
    )
    extra += [f"{s.extra:,} final events too many"] if s.extra else []
    extra += [f"{s.turned_away:,} QoS 0 messages turned away, counted"] if s.turned_away else []
    extra += [f"{s.wakeup_fd_lines} “{WAKEUP_FD}” line(s)"] if s.wakeup_fd_lines else []
    return (
        f"- {s.name} ({s.seconds:.0f} s, {s.pings} watchdog pings): {s.published:,} "
        f"published; final events: {fated}" + "".join(f"; {e}" for e in [*extra, *s.notes]) + "."
    )


def details(result: OverloadResult) -> list[str]:
    """What became of the messages, and what the daemon's log said, per scenario."""
    lines = [
        f"- {s.name}: the scenario broke: {s.problem}" if s.problem else _fate_line(s)
        for s in result.scenarios
    ]
    return [*lines, ""]


def _method(o: Options) -> str:
    return (
        "Issue 14's overload, each scenario with a fresh daemon: espeak-ng alone, output "
        "`herald_paced` (PulseAudio's null sink: real time), the default config but for the "
        f"lifted rate limits, and `WATCHDOG_USEC={o.watchdog_usec}` (a ping every "
        f"{o.watchdog_usec / 2e6:g} s) with a `NOTIFY_SOCKET` of the benchmark's. Long texts: "
        f"one plain payload of about 16 KiB (`normal`, chime `soft`), `stop` after {o.long_s:g} "
        f"s. Bursts: {o.burst:,} messages at QoS 1, the signal {o.signal_after_s:g} s after "
        "the broker had the last; after SIGTERM the daemon is started again (same journal and "
        f"broker session) to settle every message. Flood: {o.flood:,} `critical` messages, "
        "once at QoS 1 (the broker holds what the daemon cannot take yet) and once at QoS 0 "
        "(Home Assistant's `mqtt.publish` and `mosquitto_pub` default: the broker delivers the "
        "whole flood at once; what cannot wait is turned away, counted in the daemon's log, "
        "and not counted as dropped: it was never accepted). Burst and flood messages carry "
        f"`ttl` {o.ttl_s:g} s: what cannot be spoken expires. *Peak RSS*: VmHWM of the daemon, "
        "and the sampled peak of the daemon with its children (espeak-ng). *Watchdog gap*: "
        "the longest time without a WATCHDOG=1 datagram (stamped as it arrives) from READY to "
        "the end of the load. *Dropped events*: messages without exactly one final event "
        "(`rejected` included; a copy resent with the same `ts` is not a second one). "
        "*“Message queue full”*: paho refusing one of the daemon's publishes, in its log. "
        "*Signal acted on*: kill(2) → the log line or systemd notification acting on it "
        "(“herald: stopping” or STOPPING=1; “herald: reloading the configuration” or "
        "RELOADING=1), and for SIGTERM → exit. "
        f"Marks: 0 dropped, 0 refused, no gap over {GAP_LIMIT_S:.0f} s, a signal acted on "
        f"within {NOTICE_LIMIT_S:.0f} s, an exit within {EXIT_LIMIT_S:.0f} s, and (proposed "
        f"here) a peak RSS within {RSS_BUDGET_MIB} MiB, a quarter of a Pi Zero 2 W's "
        f"{PI_MEMORY_MIB} MiB."
    )


def markdown(result: OverloadResult | None, heading: str = "## 5. Overload") -> list[str]:
    """The section for RESULTS.md (or overload.md)."""
    lines = [heading, "", _method(result.options if result is not None else Options()), ""]
    if result is None:
        return lines
    lines += table(result)
    lines += details(result)
    memory_max = result.memory_max_mib()
    lines.append(
        f"The peak of the daemon with its children here: {result.peak_tree_mib:.0f} MiB; a "
        f"unit that must hold it needs `MemoryMax={memory_max}M` (that peak, a quarter more "
        f"for page cache and slack, rounded up to 32 MiB): {memory_max / PI_MEMORY_MIB:.0%} "
        f"of the Pi's {PI_MEMORY_MIB} MiB."
    )
    return [*lines, ""]


def to_json(result: OverloadResult) -> str:
    """Every figure, each scenario's verdict and the marks, for a machine to read."""
    data = asdict(result)
    for scenario, raw in zip(result.scenarios, data["scenarios"], strict=True):
        raw["dropped"] = scenario.dropped
        raw["failures"] = scenario.failures()
        raw["passed"] = not raw["failures"]
    data["marks"] = {
        "dropped": 0,
        "queue_full_lines": 0,
        "watchdog_gap_s": GAP_LIMIT_S,
        "signal_acted_on_s": NOTICE_LIMIT_S,
        "sigterm_exit_s": EXIT_LIMIT_S,
        "peak_rss_mib": RSS_BUDGET_MIB,
    }
    data["peak_tree_mib"] = round(result.peak_tree_mib, 1)
    data["memory_max_mib"] = result.memory_max_mib()
    data["passed"] = all(raw["passed"] for raw in data["scenarios"])
    return json.dumps(data, indent=2, default=str) + "\n"


def write(result: OverloadResult, out: Path) -> Path:
    """overload.json beside the report."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    path.write_text(to_json(result))
    return path


# --- alone ---------------------------------------------------------------------------------------


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.overload`: this part alone, into overload.json and overload.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("."), help="where the files go")
    parser.add_argument("--smoke", action="store_true", help="every scenario, briefly")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and configs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    options = _checked(parser, (SMOKE if args.smoke else Options()).with_args(args))
    for signum in (signal.SIGTERM, signal.SIGINT):  # stop what it started, through `finally`
        signal.signal(signum, _exit_on_signal)
    sys.setswitchinterval(0.0005)  # the notify thread stamps pings without waiting for the GIL
    root = Path(tempfile.mkdtemp(prefix="herald-overload-"))
    ws = Workspace.create(root)
    try:
        result = run(ws, Settings(out=args.out, smoke=args.smoke), random.Random(0), options)  # noqa: S311
    finally:
        ws.close()
        if args.keep_workdir:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    write(result, args.out)
    (args.out / MARKDOWN_NAME).write_text("\n".join(markdown(result, "# Herald overload")))
    log(f"wrote {args.out / JSON_NAME} and {args.out / MARKDOWN_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
