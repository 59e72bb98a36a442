"""RESULTS.md and results.png from one run's results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from bench import overload
from bench.common import Summary
from bench.footprint import BATCH, SETTLE_S, FootprintResult
from bench.overload import OverloadResult
from bench.preempt import PreemptResult
from bench.rotation import RotationResult
from bench.settings import Settings
from bench.ttfa import TtfaResult

PLOT = "results.png"


@dataclass
class Results:
    settings: Settings
    machine: dict[str, str]
    versions: dict[str, str]
    started_utc: str
    minutes: float = 0.0
    ttfa: TtfaResult | None = None
    preempt: PreemptResult | None = None
    rotation: RotationResult | None = None
    footprint: FootprintResult | None = None
    overload: OverloadResult | None = None
    failures: dict[str, str] = field(default_factory=dict)  # part -> why it has no figures


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[str]) -> list[str]:
    return [_row(*header), _row(*(["---"] * len(header))), *rows, ""]


def _summary_cells(s: Summary | None) -> list[str]:
    if s is None:
        return ["0", "—", "—", "—"]
    return [str(s.n), _ms(s.p50), _ms(s.p95), _ms(s.max)]


def _not_run(results: Results, part: str) -> list[str]:
    why = results.failures.get(part, "not run in this invocation (see --parts)")
    return [f"No figures: {why}", ""]


# --- the parts ----------------------------------------------------------------------------------


def _ttfa(results: Results) -> list[str]:
    s, r = results.settings, results.ttfa
    limit = s.first_byte_ms
    lines = [
        "## 1. Time to first audio",
        "",
        "From just before the MQTT publish (QoS 1, from a paho client, as Home Assistant would) "
        "to the moment the first sample louder than ±64 written to the player's ALSA PCM comes "
        "out of a FIFO: each player writes to a `file` PCM (slave `null`) whose file is a FIFO "
        "the benchmark reads in a thread. The variants run interleaved, every round in a random "
        f"order, one announcement at a time, {s.warmup} uncounted warm-up announcement(s) per "
        "variant first; every announcement has a text of its own except the cached row's. "
        "*The limit* is the fake's configured time from Flush to first audio: no client can "
        "beat it. *Publish → Flush* is when the fake received the announcement's Flush (its "
        "own clock; the same monotonic clock as the benchmark's).",
        "",
    ]
    if r is None:
        return lines + _not_run(results, "ttfa")
    rows = [
        _row(
            "**the limit**: the fake's first byte",
            "—",
            _ms(limit),
            _ms(limit),
            _ms(limit),
            "0.0",
            "1.00",
            "—",
        )
    ]
    warm = Summary.of(r.ms("warm"))
    for variant in r.variants:
        if variant.unavailable is not None:
            rows.append(_row(variant.label, variant.unavailable, "", "", "", "", "", ""))
            continue
        summary = Summary.of(r.ms(variant.key))
        flush = Summary.of(r.to_flush_ms(variant.key))
        above = "—" if summary is None else _ms(summary.p50 - limit)
        ratio = "—" if summary is None else f"{summary.p50 / limit:.2f}"
        rows.append(
            _row(
                variant.label,
                *_summary_cells(summary),
                above,
                ratio,
                _ms(flush.p50 if flush else None),
            )
        )
    header = [
        "variant",
        "n",
        "p50 ms",
        "p95 ms",
        "max ms",
        "p50 above the limit, ms",
        "p50 ÷ limit",
        "publish → Flush p50, ms",
    ]
    lines += _table(header, rows)
    cold = Summary.of(r.ms("cold"))
    if warm is not None:
        lines.append(
            f"Herald's overhead above the limit (warm socket): p50 {warm.p50 - limit:.1f} ms, "
            f"p95 {warm.p95 - limit:.1f} ms, max {warm.max - limit:.1f} ms."
        )
    if warm is not None and cold is not None:
        lines.append(
            f"The cold-connect client takes {cold.p50 / warm.p50:.2f}x Herald's warm time at "
            f"the median ({cold.p50 - warm.p50:.1f} ms more; a handshake here is "
            f"{s.handshake_ms:.0f} ms of simulated round trips)."
        )
    holdback = Summary.of(r.holdback_ms())
    if holdback is not None:
        lines.append(
            "Measurement cost in every row: alsa-lib's file plugin passes a period on to its "
            "file only once a whole buffer (4 periods, 80 ms of audio) more has been written; "
            "with a voice that streams faster than real time that is the time to receive and "
            "write 4 more periods. Measured in the cold client (its own clock of its first "
            f"write vs. the FIFO): p50 {holdback.p50:.1f} ms, p95 {holdback.p95:.1f} ms."
        )
    no_flush = [
        v.label
        for v in r.variants
        if v.unavailable is None and r.ms(v.key) and not r.to_flush_ms(v.key)
    ]
    if no_flush:
        lines.append(
            f"No Flush reached the fake for: {', '.join(no_flush)} (its audio did not come "
            "from the cloud voice)."
        )
    problems = {v.key: r.problems(v.key) for v in r.variants}
    bad = {k: p for k, p in problems.items() if p}
    lines.append(
        "Announcements not counted (not heard, failed, or spoken by the fallback voice): "
        + (", ".join(f"{k}: {len(p)} ({p[0]})" for k, p in bad.items()) if bad else "none")
        + f". Handshakes at the fake during the part: {r.handshakes}."
    )
    return [*lines, ""]


def _preempt(results: Results) -> list[str]:
    s, r = results.settings, results.preempt
    lines = [
        "## 2. Preemption",
        "",
        "A `low` announcement plays on `herald_paced` (ALSA → PulseAudio null sink, consumed in "
        "real time; the fake streams at real-time pace); after a random 0.6 to 1.4 s a `critical` "
        "one is published (default chime `alarm`, then its voice). **Outside** (from just before "
        "the publish): `parec` records the sink's monitor; the voices are tones of known pitch, "
        "the alarm starts with a 960 Hz note; levels are measured with a 12 ms Hann window on a "
        "1 ms grid. *Low voice stopped*: its level falls below half its level before the "
        "publish (the middle of Herald's 8 ms fade). *First sound*: a level first reaches half "
        "its peak. The recording is put on the sink's clock by fitting the read times of "
        "`parec` (earliest arrival) plus the sink's configured latency"
        + (f" ({r.sink_latency_ms:.0f} ms, from `pactl`)" if r else "")
        + ", as the null sink renders that far ahead; expect ±5 ms. **Inside**: the daemon's "
        "own log line per preemption, timed from the moment it decided to preempt (after the "
        "MQTT hop) with its monotonic clock.",
        "",
    ]
    if r is None:
        return lines + _not_run(results, "preempt")
    gap = [
        t.first_sound_ms - t.low_stopped_ms
        for t in r.trials
        if not t.problem and t.first_sound_ms is not None and t.low_stopped_ms is not None
    ]
    inside = [
        t.silent_ms + t.next_ms
        for t in r.trials
        if not t.problem and t.silent_ms is not None and t.next_ms is not None
    ]
    measures = [
        ("publish → low voice stopped", "outside", r.values("low_stopped_ms")),
        ("publish → critical's first sound (chime)", "outside", r.values("first_sound_ms")),
        ("publish → critical's voice (after the 0.8 s chime)", "outside", r.values("voice_ms")),
        ("silence heard between the two", "outside", gap),
        ("drop asked → old voice silent", "inside (log)", r.values("silent_ms")),
        ("old voice silent → next sound written", "inside (log)", r.values("next_ms")),
        ("drop asked → next sound written", "inside (log)", inside),
    ]
    rows = [_row(name, how, *_summary_cells(Summary.of(v))) for name, how, v in measures]
    lines += _table(["measure", "how", "n", "p50 ms", "p95 ms", "max ms"], rows)
    problems = r.problems()
    lines.append(
        f"Trials: {len(r.trials)} of {s.preempt_trials}; not counted: "
        + (f"{len(problems)} ({problems[0]})" if problems else "none")
        + "."
    )
    return [*lines, ""]


def _rotation(results: Results) -> list[str]:
    s, r = results.settings, results.rotation
    lines = [
        "## 3. Rotation",
        "",
        f"The fake closes each socket at {s.lifetime_s:.0f} s (1011 NET-0003, as Deepgram does "
        f"at 60 min); Herald's `max_age_s` is {s.max_age_s:.0f}. For {s.rotation_s:.0f} s, "
        "announcements (no chime) are published one at a time, 0.2 to 3 s apart at random, and "
        "timed as in part 1. An announcement *waited for a handshake* when its time to first "
        f"audio is above {s.first_byte_ms:.0f} + {s.handshake_ms / 2:.0f} ms (first byte + half "
        "a handshake) and the fake was in a handshake (it notes the start and end of each) "
        "between its publish and its first sound. *Closed for age* counts NET-0003 in the "
        "fake's close_log.",
        "",
    ]
    if r is None:
        return lines + _not_run(results, "rotation")
    ttfa = Summary.of(r.ms())
    others = ", ".join(f"{n}x {name}" for name, n in r.other_server_closes.items()) or "none"
    rows = [
        _row("announcements", len(r.announcements), ""),
        _row("sockets opened (handshakes at the fake)", r.connections, ""),
        _row("rotations in Herald's log", r.rotations_logged, ""),
        _row("**announcements that waited for a handshake**", f"**{r.waited}**", "0"),
        _row("**sockets closed by the server for age (NET-0003)**", f"**{r.closed_for_age}**", "0"),
        _row("announcements published while a handshake was in progress", r.overlapping, ""),
        _row(f"announcements above {r.threshold_ms:.0f} ms", r.slow, ""),
        _row(
            "time to first audio p50 / p95 / max, ms",
            "—" if ttfa is None else f"{ttfa.p50:.1f} / {ttfa.p95:.1f} / {ttfa.max:.1f}",
            "",
        ),
        _row("other closes by the server", others, ""),
        _row("announcements not spoken cleanly", len(r.problems), "0"),
    ]
    lines += _table(["measure", "value", "target"], rows)
    lines.append(
        "The server's 1000 closes answer Herald's `Close` on each socket it retires (and the "
        "last at shutdown)."
    )
    return [*lines, ""]


def _footprint(results: Results) -> list[str]:
    r = results.footprint
    lines = [
        "## 4. Footprint",
        "",
        "Startup: from just before the process is spawned to READY=1 on a `NOTIFY_SOCKET` "
        "datagram socket of the benchmark's (broker connected, audio device open), and to the "
        "log line saying the warm socket is open. Memory: VmRSS of /proc/<pid>/status, "
        f"{SETTLE_S:.0f} s after the last start and after the announcements (default chime, "
        f"published {BATCH} at a time). Idle CPU: utime+stime of /proc/<pid>/stat (10 ms ticks) "
        "and the threads' schedstat run time, over a window with nothing to say; wakeups are "
        "the threads' context switches in it (the WebSocket ping every 20 s and the MQTT "
        "keepalive every 30 s are expected).",
        "",
    ]
    if r is None:
        return lines + _not_run(results, "footprint")
    ready, warm = r.ready, r.warm
    idle_ns = r.idle_cpu_ns
    percent = (idle_ns / 1e9 if idle_ns is not None else r.idle_cpu_ms / 1000) / r.idle_s * 100
    per = r.busy_cpu_ms / r.announcements if r.announcements else 0.0
    rows = [
        _row(
            f"startup → READY=1 (p50 / max of {len(r.ready_ms)})",
            "—" if ready is None else f"{ready.p50:.0f} / {ready.max:.0f} ms",
        ),
        _row(
            "startup → warm socket open (p50 / max)",
            "—" if warm is None else f"{warm.p50:.0f} / {warm.max:.0f} ms",
        ),
        _row("RSS after start", f"{r.rss_start_kib / 1024:.1f} MiB"),
        _row(
            f"RSS after {r.announcements} announcements (peak)",
            f"{r.rss_after_kib / 1024:.1f} MiB ({r.hwm_after_kib / 1024:.1f} MiB)",
        ),
        _row(f"CPU while idle for {r.idle_s:.0f} s, /proc/<pid>/stat", f"{r.idle_cpu_ms:.0f} ms"),
        _row(
            "the same, schedstat",
            "—" if idle_ns is None else f"{idle_ns / 1e6:.2f} ms ({percent:.4f} % of a core)",
        ),
        _row(
            "wakeups while idle (context switches)",
            f"{r.idle_wakeups} ({r.idle_wakeups / r.idle_s * 60:.0f} a minute)",
        ),
        _row(f"CPU per announcement (over {r.announcements}, {r.busy_s:.0f} s)", f"{per:.1f} ms"),
        _row("announcements not spoken cleanly", r.failed),
    ]
    lines += _table(["measure", "value"], rows)
    return lines


def _overload(results: Results) -> list[str]:
    """Part 5, when it was asked for (its figures also go to overload.json)."""
    if overload.PART not in results.settings.parts:
        return []
    if results.overload is None:
        return overload.markdown(None) + _not_run(results, overload.PART)
    return overload.markdown(results.overload)


# --- the reading --------------------------------------------------------------------------------


def _reading(results: Results) -> list[str]:
    s = results.settings
    sentences: list[str] = []
    limit = s.first_byte_ms
    if results.ttfa is not None:
        r = results.ttfa
        warm, cold, chime = (Summary.of(r.ms(k)) for k in ("warm", "cold", "chime"))
        cached = Summary.of(r.ms("cached"))
        if warm is not None:
            sentences.append(
                f"With a warm socket Herald writes its first audio to ALSA {warm.p50:.0f} ms "
                f"after the publish at the median (p95 {warm.p95:.0f} ms): {warm.p50 - limit:.0f} "
                f"ms above the {limit:.0f} ms the engine itself takes (x{warm.p50 / limit:.2f})"
            )
        if cold is not None and warm is not None:
            sentences[-1] += (
                f", where the cold-connect client needs {cold.p50:.0f} ms, "
                f"{cold.p50 - limit:.0f} ms above it (x{cold.p50 / limit:.2f}, "
                f"{cold.p50 / warm.p50:.1f}x Herald's), most of it the "
                f"{s.handshake_ms:.0f} ms handshake."
            )
        elif sentences:
            sentences[-1] += "."
        if chime is not None:
            when = "before" if chime.p50 < limit else "after"
            sentences.append(
                f"With its chime Herald makes its first sound after {chime.p50:.0f} ms, "
                f"{when} the engine's first byte could arrive."
            )
        if cached is not None:
            sentences.append(
                f"A cached phrase starts after {cached.p50:.0f} ms (x{cached.p50 / limit:.2f})."
            )
    if results.preempt is not None:
        p = results.preempt
        stop, first = Summary.of(p.values("low_stopped_ms")), Summary.of(p.values("first_sound_ms"))
        silent = Summary.of(p.values("silent_ms"))
        if stop is not None and first is not None and silent is not None:
            sentences.append(
                f"A critical announcement silences a low one {stop.p50:.0f} ms after it is "
                f"published (p95 {stop.p95:.0f} ms) and is heard {first.p50:.0f} ms after it "
                f"(p95 {first.p95:.0f} ms), on a real-time output; inside the daemon the old "
                f"voice is silent {silent.p50:.1f} ms after the decision (p95 {silent.p95:.1f})."
            )
    if results.rotation is not None:
        o = results.rotation
        sentences.append(
            f"Over {_duration(o.duration_s)} with the server closing sockets at "
            f"{s.lifetime_s:.0f} s, Herald opened {o.connections} sockets for "
            f"{len(o.announcements)} announcements; {o.waited} announcement(s) waited for a "
            f"handshake and {o.closed_for_age} socket(s) were closed by the server for age."
        )
    if results.footprint is not None:
        f = results.footprint
        ready = f.ready
        sentences.append(
            f"The daemon is READY {ready.p50 if ready else 0:.0f} ms after it is started, holds "
            f"{f.rss_start_kib / 1024:.0f} MiB after start and {f.rss_after_kib / 1024:.0f} MiB "
            f"after {f.announcements} announcements, and used {f.idle_cpu_ms:.0f} ms of CPU "
            f"(ticks) in {f.idle_s:.0f} s of idling, waking {f.idle_wakeups} times."
        )
    if not sentences:
        return []
    return ["## Reading", "", " ".join(sentences), ""]


def _caveats(results: Results) -> list[str]:
    s = results.settings
    return [
        "## What these figures are not",
        "",
        "- The network is simulated: the fake runs on loopback and only its handshake costs "
        f"round trips ({s.round_trip_ms:.0f} ms each); Speak → Flush → audio costs the "
        "configured first byte and nothing else, with no jitter or loss. Deepgram's own first "
        "byte varies; here it is constant.",
        "- Parts 1, 3 and 4 play on a `null` slave that takes audio at once, so no row includes "
        "a sound card's buffer; part 2 uses PulseAudio's null sink for real-time pacing. A real "
        "card adds its own output latency to every row alike.",
        "- The ear itself costs a little (the file plugin's hold-back, measured in part 1), the "
        "same for every player.",
        "- The per-minute limits (20 Flushes and 2,400 characters a minute on Deepgram's side) "
        "are lifted on both the fake and the daemon: the benchmark speaks far more often than a "
        "home, to measure latency rather than the limits.",
        f"- Everything shares this machine's {results.machine.get('cores', '?')} cores: the "
        "benchmark, the daemon, the fake, mosquitto, the cold client and PulseAudio.",
        "",
    ]


# --- the whole report ---------------------------------------------------------------------------


def write(results: Results, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    s = results.settings
    header = [
        "# Herald benchmark results",
        "",
        f"Written by `{s.command}` (started {results.started_utc}, took "
        f"{results.minutes:.1f} min{', **smoke mode**: few iterations' if s.smoke else ''}). "
        "Every figure here comes from that one run, on this machine, with these versions; "
        "`bench/run.py` regenerates this file and the plot.",
        "",
        *_table(["machine", ""], [_row(k, v) for k, v in results.machine.items()]),
        *_table(["software", "version"], [_row(k, v) for k, v in results.versions.items()]),
        f"Parameters: the fake Deepgram server (`tests/fake_deepgram.py`, in a process of its "
        f"own) answers a Flush with its first audio after **{s.first_byte_ms:.0f} ms** (the "
        f"limit); a handshake costs 3 simulated round trips of {s.round_trip_ms:.0f} ms "
        f"(TCP + TLS + WebSocket upgrade = {s.handshake_ms:.0f} ms). {s.count} announcements "
        f"per variant in part 1, {s.preempt_trials} preemptions, {s.rotation_s:.0f} s of "
        f"rotation (socket lifetime {s.lifetime_s:.0f} s, `max_age_s` {s.max_age_s:.0f}), "
        f"{s.footprint_count} announcements and {s.idle_s:.0f} s idle for the footprint, "
        f"{s.startups} timed start(s); random seed {s.seed}. The daemon runs with its default "
        'config but for the broker, the device, the fake\'s URL, `engines = ["deepgram", '
        '"espeak"]` and the lifted rate limits; an announcement spoken by espeak-ng (the '
        "fallback) is not counted.",
        "",
    ]
    body = [
        *_ttfa(results),
        *_preempt(results),
        *_rotation(results),
        *_footprint(results),
        *_overload(results),
        *_reading(results),
        f"![Time to first audio, preemption and rotation]({PLOT})",
        "",
        *_caveats(results),
    ]
    path = out / "RESULTS.md"
    path.write_text("\n".join(header + body))
    if results.overload is not None:
        overload.write(results.overload, out)
    plot(results, out / PLOT)
    return path


# --- the plot -----------------------------------------------------------------------------------


def _empty(ax: Axes, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _plot_ttfa(ax: Axes, results: Results) -> None:
    title = "1. Time to first audio (CDF)"
    r = results.ttfa
    if r is None:
        _empty(ax, title, "not run")
        return
    for variant in r.variants:
        values = np.sort(np.asarray(r.ms(variant.key)))
        if values.size:
            ax.step(
                values,
                np.arange(1, values.size + 1) / values.size,
                where="post",
                label=f"{variant.label} (p50 {np.median(values):.0f} ms)",
            )
    limit = results.settings.first_byte_ms
    ax.axvline(limit, color="black", linestyle="--", label=f"the limit: first byte {limit:.0f} ms")
    ax.set_xlabel("ms from the MQTT publish to the first sound written to ALSA")
    ax.set_ylabel("fraction of announcements")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def _plot_preempt(ax: Axes, results: Results) -> None:
    title = "2. Preemption, through a real-time output"
    p = results.preempt
    if p is None or not p.values("first_sound_ms"):
        _empty(ax, title, "not run")
        return
    series = [
        ("low voice stopped (outside)", p.values("low_stopped_ms")),
        ("critical's first sound (outside)", p.values("first_sound_ms")),
        ("old voice silent (daemon's log)", p.values("silent_ms")),
    ]
    top = max(max(v) for _, v in series if v)
    bins = np.linspace(0, max(top, 1.0) * 1.05, 30)
    for label, values in series:
        ax.hist(values, bins=list(bins), alpha=0.55, label=label)
    ax.set_xlabel("ms after the critical one's publish (the daemon's log: after its decision)")
    ax.set_ylabel("trials")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _plot_rotation(ax: Axes, results: Results) -> None:
    title = "3. Rotation: every announcement's time to first audio"
    r = results.rotation
    if r is None or not r.announcements:
        _empty(ax, title, "not run")
        return
    wide = r.duration_s / 400  # a handshake lasts 0.1 s: draw it at least a pixel wide
    for start, end in r.handshakes:
        begin = start - r.started
        ax.axvspan(begin, max(end - r.started, begin + wide), color="orange", alpha=0.5, lw=0)
    points = [(a.published - r.started, a.ms) for a in r.announcements if a.ms is not None]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, ".", markersize=3, label="announcement")
    ax.axhline(r.threshold_ms, color="red", linestyle=":", label="first byte + half a handshake")
    ax.plot([], [], color="orange", alpha=0.5, linewidth=6, label="handshake at the fake")
    ax.set_xlabel("s into the part")
    ax.set_ylabel("time to first audio, ms")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)


def plot(results: Results, path: Path) -> None:
    figure, axes = plt.subplots(3, 1, figsize=(9, 12))
    _plot_ttfa(axes[0], results)
    _plot_preempt(axes[1], results)
    _plot_rotation(axes[2], results)
    s = results.settings
    figure.suptitle(
        f"Herald benchmark: first byte {s.first_byte_ms:.0f} ms, round trip "
        f"{s.round_trip_ms:.0f} ms{' (smoke mode)' if s.smoke else ''}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
