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

from bench import ducking, esphome, overload, rooms, sound
from bench.common import SOUND_THRESHOLD, Summary
from bench.ducking import DuckingResult
from bench.esphome import EsphomeResult
from bench.footprint import BATCH, SETTLE_S, FootprintResult
from bench.overload import OverloadResult
from bench.preempt import PreemptResult
from bench.rooms import RoomsResult
from bench.rotation import RotationResult
from bench.settings import Settings
from bench.sound import SoundResult
from bench.ttfa import TtfaResult
from herald.audio.alsa import FADE_MS, SYNC_SLACK_MS
from herald.audio.loudness import MAX_BOOST_DB, MAX_CUT_DB

PLOT = "results.png"
SOUND_PLOT = "sound.png"  # part 6's plot


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
    sound: SoundResult | None = None
    ducking: DuckingResult | None = None
    rooms: RoomsResult | None = None
    esphome: EsphomeResult | None = None
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


def _lufs(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _range(values: Sequence[float | None], digits: int = 1, between: str = " / ") -> str:
    """min / max (one value when they agree to the digits shown)."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    low, high = f"{min(known):.{digits}f}", f"{max(known):.{digits}f}"
    return low if low == high else f"{low}{between}{high}"


def _verdict(passed: bool) -> str:
    return "**PASS**" if passed else "**FAIL**"


def _sound(results: Results) -> list[str]:
    s, r = results.settings, results.sound
    lines = ["## 6. Sound", ""]
    if r is None:
        return lines + _not_run(results, sound.PART)
    lines += [
        "### Loudness as heard",
        "",
        "Each source speaks through a real `Speaker` with the daemon's levelling "
        "(`herald.app.build_delivery` on the default config, `state_dir` a fresh temporary "
        "directory, so every voice starts from its prior; volume 1.0) into a recording sink; "
        f"each voice says {s.sound_announcements} different texts, each chime is heard "
        f"{max(1, s.sound_announcements // 2)} time(s). Each recording is measured with "
        "Herald's meter (`herald.audio.meter`, libebur128): BS.1770 integrated loudness, gated "
        "(a sound shorter than 400 ms over all of it), and true peak. *Source* is what the "
        "voice, the cache or the chime delivered, before Herald. Deepgram, SLNG and the gateway "
        "are the real voice classes against the tests' fakes on loopback: **their audio is a "
        "sine tone** at 0.3 of full scale, not speech. The vendors are espeak-ng's speech "
        "scaled to a level and streamed in 20 ms pieces (the loudest clips where the scaled "
        "speech passes full scale). The cached phrases were stored at "
        + " and ".join(f"{v:.0f}" for v in sound.CACHED_LEVELS)
        + " LUFS in turn and each was played from the cache (a hit: the `started` event says "
        "`cached`). A chime is measured alone: the first samples of the recording, as many as "
        "the chime has. A voice's first announcement is levelled by its prior and is not "
        "judged; the targets apply to a voice from its second announcement on, and to every "
        "chime and cached phrase, which are measured whole before they play.",
        "",
    ]
    rows = []
    for src in r.sources:
        first = src.first if src.kind == "voice" else None
        judged = src.judged
        rows.append(
            _row(
                src.label,
                src.note + (f" ({src.problem})" if src.problem else ""),
                len(src.heard),
                _range([h.source_lufs for h in src.heard]),
                "—" if first is None else f"{_lufs(first.lufs)} / {_lufs(first.true_peak_dbtp)}",
                _range([h.lufs for h in judged], 2),
                _range(
                    [
                        max(
                            (h.true_peak_dbtp for h in judged if h.true_peak_dbtp is not None),
                            default=None,
                        )
                    ],
                    2,
                ),
            )
        )
    lines += _table(
        [
            "source",
            "what it is",
            "n",
            "source LUFS",
            "1st, by the prior: LUFS / dBTP",
            "judged: LUFS (min / max)",
            "judged: true peak max, dBTP",
        ],
        rows,
    )
    verdicts = r.verdicts()
    lines += _table(
        ["target (judged announcements)", "measured", "target", "verdict"],
        [_row(v.criterion, v.value, v.target, _verdict(v.passed)) for v in verdicts],
    )
    firsts = r.firsts()
    if firsts:
        peaks = [h.true_peak_dbtp for _, h in firsts if h.true_peak_dbtp is not None]
        lines.append(
            "First announcements of the voices (levelled by the prior, not judged): "
            f"{_range([h.lufs for _, h in firsts], between=' to ')} LUFS, true peak at most "
            f"{_range([max(peaks, default=None)], 2)} dBTP."
        )
    for src in r.sources:
        out = [h for h in src.judged if h.lufs is not None and abs(h.lufs - r.target_lufs) > 1.5]
        levels = [h.source_lufs for h in out if h.source_lufs is not None]
        if not out or not levels:
            continue
        if max(levels) < r.target_lufs - MAX_BOOST_DB:
            lines.append(
                f"*{src.label}* is {max(levels):.1f} LUFS as delivered: Herald raises a sound "
                f"by at most {MAX_BOOST_DB:.0f} dB (`MAX_BOOST_DB`), so it is heard at "
                f"{_range([h.lufs for h in out], between=' to ')} LUFS."
            )
        elif min(levels) > r.target_lufs + MAX_CUT_DB:
            lines.append(
                f"*{src.label}* is {min(levels):.1f} LUFS as delivered: Herald lowers a sound by "
                f"at most {MAX_CUT_DB:.0f} dB (`MAX_CUT_DB`)."
            )
        else:
            lines.append(
                f"*{src.label}* is heard at {_range([h.lufs for h in out], between=' to ')} "
                "LUFS, more than 1.5 LU from the target."
            )
    lines.append("")
    return lines + _sound_device(results, r) + [f"![Part 6: sound]({SOUND_PLOT})", ""]


def _sound_device(results: Results, r: SoundResult) -> list[str]:
    s = results.settings
    lines = [
        "### A preemption cut",
        "",
        "espeak-ng's speech, levelled to the target"
        + (f" ({r.signal_lufs:.1f} LUFS measured)" if r.signal_lufs is not None else "")
        + ", plays through a real `AlsaOutput` on `herald_paced` (ALSA's PulseAudio plugin "
        "into a null sink that plays in real time); "
        f"{sound.CUT_AFTER_S[0]} to {sound.CUT_AFTER_S[1]} s after it starts the output is "
        "dropped as the Speaker drops it (`drop()`, and the playing task cancelled), "
        f"{s.sound_cuts} times. `parec` records the sink's monitor. The recording is matched "
        f"with the signal sample for sample (within ±{sound.DIFFERS}) shortly before its sound "
        "ends; the cut starts where it parts from the signal and runs to the first silent "
        "sample. A step is |x[n+1] - x[n]| in int16 units, taken from 1 ms before the cut to "
        "the silence after it. Beside it, **the output's fade alone**: "
        "`AlsaOutput._drop_with_fade` given a stand-in PCM that holds the same signal, at the "
        "same points (what the fade would make of the cut if it reached the sink).",
        "",
    ]
    if r.device_problem:
        return [*lines, f"No figures: {r.device_problem}", ""]
    cuts = [c for c in r.cuts if not c.problem]
    step = r.signal_step or 1.0
    measures: list[tuple[str, list[float], str]] = [
        ("largest step at the cut, as recorded", r.cut_values("step"), ".0f"),
        (
            f"the same ÷ the signal's largest step ({r.signal_step:.0f})",
            [v / step for v in r.cut_values("step")],
            ".3f",
        ),
        (
            "a cut without a fade at the same points (the size of the signal there)",
            r.cut_values("hard_step"),
            ".0f",
        ),
        ("the output's fade alone (offline): largest step", r.cut_values("offline_step"), ".0f"),
        (
            f"the signal's own largest step there (1 ms before, {FADE_MS} ms after)",
            r.cut_values("local_step"),
            ".0f",
        ),
        ("sound recorded after the parting (the fade heard), ms", r.cut_values("fade_ms"), ".1f"),
        ("the output's log: drop asked → silent, ms", r.cut_values("silent_ms"), ".1f"),
    ]
    rows = []
    for name, values, fmt in measures:
        if values:
            rows.append(
                _row(
                    name,
                    len(values),
                    format(float(np.median(values)), fmt),
                    format(max(values), fmt),
                )
            )
        else:
            rows.append(_row(name, 0, "—", "—"))
    lines += _table(["measure", "n", "p50", "max"], rows)
    faded = sum(1 for c in cuts if (c.fade_ms or 0) >= 1.0)
    boundary = sum(1 for c in cuts if c.on_period)
    problems = [c.problem for c in r.cuts if c.problem]
    lines.append(
        f"Cuts measured: {len(cuts)} of {len(r.cuts)}"
        + (f" (not: {problems[0]})" if problems else "")
        + f". In {len(cuts) - faded} of them the recording goes from the signal straight to "
        "digital silence (under 1 ms of sound after the parting), "
        f"and {boundary} fell on a boundary of the output's 20 ms periods."
    )
    lost = [t.start_lost_ms for t in r.tails if not t.problem and t.start_lost_ms is not None]
    if cuts and faded == 0 and lost and min(lost) >= FADE_MS:
        lines.append(
            f"The first {min(lost):.0f} ms or more of every announcement of the tail table are "
            "missing from the recording as well: longer than the fade, which the output writes "
            "after `pcm.drop()`, as the start of a new sound. That is a likely reason the fade "
            "is not in it; what a sound card plays was not measured."
        )
    lines += [
        "",
        "### The tail",
        "",
        "A voice says 0.5 s of noise (200 Hz to 2 kHz) and then a 50 ms burst at 3 kHz: the "
        "marker is its last 50 ms. A Speaker with the daemon's levelling speaks it through a "
        "real `AlsaOutput` on `herald_paced`, alternately with `audio.tail_ms` at its default "
        f"({r.tail_ms}) and at 0, {s.sound_tails} times each. What the output was given is kept; "
        "the monitor's recording is matched with it shortly before the marker. *Received*: the "
        "recording's energy from the marker's start to 30 ms after its end, over the same of "
        "what the output was given. *Start missing*: how much of the start of the sound the "
        "recording lacks.",
        "",
    ]
    rows = []
    for tail_ms in (r.tail_ms, 0):
        values = r.tail_values(tail_ms)
        lost = [
            t.start_lost_ms
            for t in r.tails
            if t.tail_ms == tail_ms and not t.problem and t.start_lost_ms is not None
        ]
        rows.append(
            _row(
                f"{tail_ms} ms" + (" (default)" if tail_ms == r.tail_ms else ""),
                len(values),
                f"{np.median(values) * 100:.1f} %" if values else "—",
                f"{min(values) * 100:.1f} %" if values else "—",
                f"{np.median(lost):.1f} / {max(lost):.1f}" if lost else "—",
            )
        )
    lines += _table(
        [
            "`audio.tail_ms`",
            "n",
            "marker energy received, p50",
            "min",
            "start missing, ms (p50 / max)",
        ],
        rows,
    )
    problems = [t.problem for t in r.tails if t.problem]
    if problems:
        lines += [f"Not measured: {len(problems)} ({problems[0]}).", ""]
    return lines


def _ducking(results: Results) -> list[str]:
    r = results.ducking
    lines = ["## 7. Ducking", ""]
    if r is None:
        return lines + _not_run(results, ducking.PART)
    players = ", ".join(f"{name} {version}" for name, version in r.versions.items())
    volumes = ", ".join(
        f"{run.label} {run.before} → {run.ducked}" for run in r.backends if run.problem is None
    )
    speech = f", {r.speech_ms:.0f} ms from its first sound to its last" if r.speech_ms else ""
    warmup = {0: "", 1: "; the first after each start is not counted"}.get(
        r.warmup, f"; the first {r.warmup} after each start are not counted"
    )
    lines += [
        "For each backend in turn, a fresh daemon with `[ducking] enabled = true` at its "
        f"defaults (`level_db` {r.level_db:.0f}, `ramp_ms` {r.ramp_ms}) and that backend "
        "alone; espeak-ng alone, output `herald_paced` (PulseAudio's null sink: real time). "
        f'{r.announcements} announcements per backend, all "{r.text}" (espeak-ng{speech}; '
        "no chime), published one at a time (QoS 1), each once the music is back from the one "
        f"before{warmup}. The players are real ({players}; all on loopback): an MPD with a "
        "null output and a software mixer, playing a silent track at volume 70; a `pacat` "
        "stream of silence on the daemon's PulseAudio server at 100 %; a snapserver with one "
        "snapclient at 80. Each reports its volume to the benchmark, stamped on arrival: "
        "**MPD** `idle mixer` on a connection of its own, then `status` for the value; "
        "**PulseAudio** `pactl subscribe` (a change event on the music's stream), then "
        "`pactl -f json list sink-inputs` for the value (read after each event, not polled); "
        "**Snapcast** the control port's `Client.OnVolumeChanged` notifications (the server's "
        "word: when the snapclient applies it was not measured). A volume is reached at the "
        "change that set it (the last change before the first report of it). *Down*: from "
        f"just before the publish to the ducked volume ({volumes}; a PulseAudio stream's raw "
        "volume). *Back*: to the original volume. *The last sound*: the last sample beyond "
        f"±{SOUND_THRESHOLD} in a `parec` recording of the sink's monitor, timed as in part 2 "
        f"(the sink's {r.sink_latency_ms:.0f} ms latency added; ±5 ms); *`finished`*: that "
        "event's `ts` (wall clock, 1 ms steps), which the daemon sends once the output has "
        "played out.",
        "",
    ]
    rows = []
    names = [
        ("down_first", "publish → first step down"),
        ("down", "**publish → down**"),
        ("finished", "last sound → `finished` event"),
        ("up_first", "last sound → first step up"),
        ("back", "**last sound → back**"),
        ("back_finished", "`finished` → back"),
    ]
    for run in r.backends:
        if run.problem is not None:
            rows.append(_row(run.label, f"not measured: {run.problem}", "", "", "", ""))
            continue
        for key, name in names:
            rows.append(_row(run.label, name, *_summary_cells(Summary.of(run.values(key)))))
    lines += _table(["backend", "measure", "n", "p50 ms", "p95 ms", "max ms"], rows)
    measured = [run for run in r.backends if run.problem is None]
    lead = [v for run in measured for v in run.values("lead")]
    counted = sum(len(run.trials) for run in measured)
    if lead:
        before = sum(1 for v in lead if v > 0)
        lines.append(
            f"The music was reported down before Herald's first sound reached the sink in "
            f"{before} of {len(lead)} announcements ({np.median(lead):.0f} ms before it at the "
            f"median, {min(lead):.0f} ms at the least)."
        )
    firsts = [
        f"{run.label} {_ms(float(np.median(down)))} / {_ms(float(np.median(back)))}"
        for run in measured
        if (down := run.values("down", run.warmup)) and (back := run.values("back", run.warmup))
    ]
    if firsts:
        lines.append(
            "The first announcement after each start (not counted), down / back in ms: "
            + "; ".join(firsts)
            + "."
        )
    problems = [p for run in measured for p in run.problems()]
    warnings = [w for run in r.backends for w in run.warnings]
    lines.append(
        f"Announcements counted: {counted - len(problems)} of {counted}"
        + (f"; not: {len(problems)} ({problems[0]})" if problems else "")
        + ". The daemon's ducking warnings: "
        + (f"{len(warnings)} ({warnings[0]})" if warnings else "none")
        + "."
        + (f" The recording: {r.recording_problem}." if r.recording_problem else "")
    )
    lines.append("")
    if text := _ducking_bounds(r):
        lines += [text, ""]
    return lines


def _ducking_bounds(r: DuckingResult) -> str:
    """What bounds the two measures, with the figures (medians pooled over the backends)."""
    runs = [run for run in r.backends if run.problem is None]
    keys = ("down", "down_first", "ramp_down", "ramp_up", "back", "finished", "back_finished")
    pooled = {key: [v for run in runs for v in run.values(key)] for key in keys}
    if not all(pooled.values()):
        return ""
    m = {key: float(np.median(values)) for key, values in pooled.items()}
    restore_ms = r.restore_after_s * 1000
    rest_ms = m["back_finished"] - restore_ms - m["ramp_up"]
    trailing = (
        f"espeak-ng's own {r.espeak_trailing_ms:.0f} ms of silence after its last sound, "
        if r.espeak_trailing_ms is not None
        else "the silence the voice ends with, "
    )
    return (
        f"What bounds them (medians over the backends). *Down* is the ramp, by design: "
        f"`ramp_ms` {r.ramp_ms} in steps, the first at once and the last {m['ramp_down']:.0f} "
        "ms later, and Herald's first sound waits for it; before the first step come the "
        "MQTT hop, the queue and the backend's first call (a `pactl` process per call; a TCP "
        f"connection to MPD or Snapcast): {m['down_first']:.0f} ms. {m['down']:.0f} ms in "
        f"all. *Back* is by design too: the music comes back `RESTORE_AFTER_S` "
        f"({r.restore_after_s} s) after the announcement has played out, so that the next "
        "one of a queue keeps it down, and then ramps up: from the `finished` event that is "
        f"{m['back_finished']:.0f} ms ({restore_ms:.0f} + {m['ramp_up']:.0f} of ramp + "
        f"{rest_ms:.0f} for the backend's calls). The announcement plays out "
        f"{m['finished']:.0f} ms after its last sound is heard: {trailing}`audio.tail_ms` "
        f"({r.tail_ms}) and the output's drain. So {m['back']:.0f} ms from the last sound to "
        f"the music back, of which {r.tail_ms + restore_ms + m['ramp_up']:.0f} ms is "
        "Herald's design (tail, wait, ramp) and the voice's own trailing silence most of the "
        "rest: a voice that ends sooner gets the music back sooner."
    )


ROOMS_VARIANTS = ((2, True), (4, True), (2, False))  # (rooms, chime) as part 8 announces them


def _rooms_label(count: int, chime: bool) -> str:
    return f"{count}" + ("" if chime else ", no chime")


def _rooms(results: Results) -> list[str]:
    r = results.rooms
    lines = ["## 8. Rooms in sync", ""]
    if r is None:
        return lines + _not_run(results, rooms.PART)
    first_bytes = ", ".join(f"{ms:.0f}" for ms in r.first_byte_ms)
    warmup = {0: "", 1: "; the first of each kind after each start is not counted"}.get(
        r.warmup, f"; the first {r.warmup} of each kind after each start are not counted"
    )
    lines += [
        f"{len(r.first_byte_ms)} daemons on this machine, each with a fake Deepgram of its own "
        "(a process of its own, streaming in real time) whose first audio follows a Flush "
        f"after {first_bytes} ms (rooms 1 to {len(r.first_byte_ms)}), and each playing "
        "through ALSA's PulseAudio plugin into a sink of its own, `herald_room:SINK=roomN`: "
        "channel N-1 of one null sink (real time), whose monitor `parec` records as one "
        "stream, so every room is on one clock and the rooms' offsets are read off the "
        "recording to the sample. Rooms 1 and 2 (the 80 and 300 ms voices) form a group of "
        "2, all four a group of 4. Announcements are published to `herald/group/<g>/say` "
        "(QoS 1), one at a time, each once every room it reached has finished the one before, "
        f"the kinds in turn{warmup}: with the normal priority's chime (`{r.chime}`, the "
        f"default) to each group, {r.announcements} each with `[sync]` at its defaults "
        f"(`lead_ms` {r.lead_ms}) but for `trust_clock = true` (the daemons share this "
        "machine's clock, which no NTP client keeps here), then, with fresh daemons, "
        f"{r.baseline} each with `[sync] enabled = false`, how rooms start today; and "
        f'{r.baseline} to the group of 2 without a chime (`"chime": false`, the low '
        "priority's default) in each of the two. *Onset spread*: the latest room's first "
        f"sample beyond ±{SOUND_THRESHOLD} minus the earliest room's; *end spread*: the same of "
        "their last samples. *Publish → first sound*: from just before the publish to the "
        "earliest room's onset, the recording timed as in part 2 (`parec`'s reads, plus the "
        f"sink's {r.sink_latency_ms:.0f} ms latency; ±5 ms). *Agreed instant → first sound*: "
        "from the `sync_at` of the rooms' `started` events (wall clock, 1 ms steps) to the "
        "same onset.",
        "",
    ]
    names = [
        ("onset", "**onset spread**"),
        ("end", "end spread"),
        ("latency", "publish → first sound"),
        ("placed", "agreed instant → first sound"),
    ]
    rows = []
    for count, chime in ROOMS_VARIANTS:
        for sync in (True, False):
            series = r.get(count, sync, chime)
            label = "on" if sync else "off (today)"
            if series is None or not series.trials:
                why = r.phase_problems.get("on" if sync else "off", "not run")
                rows.append(
                    _row(_rooms_label(count, chime), label, f"not measured: {why}", "", "", "", "")
                )
                continue
            for key, name in names:
                if key == "placed" and not sync:
                    continue
                rows.append(
                    _row(
                        _rooms_label(count, chime),
                        label,
                        name,
                        *_summary_cells(Summary.of(series.values(key))),
                    )
                )
    lines += _table(["rooms", "`[sync]`", "measure", "n", "p50 ms", "p95 ms", "max ms"], rows)
    verdicts = []
    for count, chime in ROOMS_VARIANTS:
        series = r.get(count, True, chime)
        spread = Summary.of(series.values("onset")) if series is not None else None
        if spread is not None:
            verdicts.append(
                _row(
                    f"onset spread with sync, {count} rooms"
                    + ("" if chime else ", no chime")
                    + ", p95",
                    f"{spread.p95:.1f} ms",
                    f"≤ {rooms.TARGET_P95_MS:.0f} ms",
                    _verdict(spread.p95 <= rooms.TARGET_P95_MS),
                )
            )
    if verdicts:
        lines += _table(["target", "measured", "target", "verdict"], verdicts)
    lines += _rooms_counts(r)
    lines.append("")
    if text := _rooms_bounds(r):
        lines += [text, ""]
    lines += [_rooms_budget(r), ""]
    return lines


def _rooms_counts(r: RoomsResult) -> list[str]:
    """What was counted, whether the rooms agreed, and what the daemons said."""
    synced = [s for s in r.series if s.sync]
    unsynced = [s for s in r.series if not s.sync]
    measured = sum(s.measured() for s in synced)
    agreed = sum(s.agreed() for s in synced)
    off_synced = sum(
        1
        for s in unsynced
        for t in s.trials
        if any(e.get("synced") is not False for e in t.started.values())
    )
    lines = [
        f"With sync, every room's `started` event said `synced: true` with one `sync_at` in "
        f"{agreed} of {measured} announcements; without, "
        + (
            "every room's said `synced: false`."
            if off_synced == 0
            else f"{off_synced} announcement(s) had a room that did not say `synced: false`."
        )
    ]
    firsts = [
        f"{s.rooms} rooms{'' if s.chime else ' without a chime'}, sync "
        f"{'on' if s.sync else 'off'}: {_ms(max(v))}"
        for s in r.series
        if (v := s.values("onset", s.warmup))
    ]
    if firsts:
        lines.append(
            "The first announcement of each kind after each start (not counted), onset "
            "spread in ms: " + "; ".join(firsts) + "."
        )
    skips = [
        (room, ms, t)
        for s in synced
        for t in s.trials
        for room, ms in t.skipped_ms.items()
        if ms >= 1
    ]
    small = len(r.joined_late_ms) - len(skips)
    where = ""
    if skips:
        sizes = _range([ms for _, ms, _ in skips], 0, " to ")
        spreads = [t.end_spread_ms for _, _, t in skips if t.end_spread_ms is not None]
        which = ", ".join(str(n) for n in sorted({n for n, _, _ in skips}))
        ended = f"; those announcements ended at most {max(spreads, default=0):.1f} ms apart"
        where = f" ({sizes} ms, in room(s) {which}{ended if spreads else ''})"
    lines.append(
        "Placed sounds that skipped a part of themselves to stay in step (the daemon's "
        '"joined N ms late, in step", logged at the end of a sound that skipped 1 ms or more; '
        "runs before that change logged smaller ones as 0 ms): "
        + (f"{len(skips)} of 1 ms or more{where}" if skips else "none of 1 ms or more")
        + (f", and {small} under 1 ms (a frame or two, logged as 0 ms)" if small else "")
        + "."
    )
    problems = [p for s in r.series for p in s.problems()]
    counted = sum(len(s.trials) for s in r.series)
    lines.append(
        f"Announcements counted: {counted - len(problems)} of {counted}"
        + (f"; not: {len(problems)} ({problems[0]})" if problems else "")
        + ". Daemons that would not take part: "
        + (f"{len(r.not_taking_part)} ({r.not_taking_part[0]})" if r.not_taking_part else "none")
        + "."
        + "".join(f" Sync {phase}: {why}." for phase, why in r.phase_problems.items())
    )
    return lines


def _rooms_bounds(r: RoomsResult) -> str:
    """What bounds the figures, with them (medians; the chime's two groups pooled)."""

    def pooled(key: str, sync: bool, chime: bool) -> list[float]:
        return [v for s in r.series if (s.sync, s.chime) == (sync, chime) for v in s.values(key)]

    on, off = pooled("onset", True, True), pooled("onset", False, True)
    late_on, late_off = pooled("latency", True, True), pooled("latency", False, True)
    if not (on and off and late_on and late_off):
        return ""
    end_on, end_off = pooled("end", True, True), pooled("end", False, True)
    med = {
        "on": float(np.median(on)),
        "off": float(np.median(off)),
        "end_on": float(np.median(end_on)),
        "end_off": float(np.median(end_off)),
        "late_on": float(np.median(late_on)),
        "late_off": float(np.median(late_off)),
    }
    p95_end = float(np.percentile(end_on, 95))
    text = (
        "What bounds them (medians; with the chime, the two groups pooled). **With sync** "
        f"the rooms start {med['on']:.2f} ms apart ({max(on):.2f} ms at most): each writes "
        "silence until ALSA's own delay (`snd_pcm_delay`, the whole chain down to the "
        "PulseAudio sink) says its next frame is heard at the agreed instant, then the chime. "
        "Here the rooms share one clock and one sink, so what is left is how exactly each "
        "daemon reads that delay and how PulseAudio takes each stream's first frames. They "
        f"end {med['end_on']:.2f} ms apart (p95 {p95_end:.2f}, {max(end_on):.1f} at most): a "
        f"placed sound more than {SYNC_SLACK_MS} ms from its place is put back "
        "(`SYNC_SLACK_MS`), by skipping what came late or by a moment of silence. "
        "**Without sync, with the chime**, rooms start "
        f"{med['off']:.2f} ms apart ({max(off):.2f} at most) and end {med['end_off']:.2f} ms "
        "apart: each plays the chime as soon as it has the announcement, and each voice is "
        "ready before its chime ends, so the 80 to 300 ms between the voices never shows; "
        "what separates the rooms is the MQTT delivery, each daemon's path to its first "
        "write and PulseAudio's start of each stream, all on one machine."
    )
    bare_on, bare_off = pooled("onset", True, False), pooled("onset", False, False)
    if bare_on and bare_off:
        text += (
            " **Without a chime** the first sound is the voice: today the rooms start "
            f"{float(np.median(bare_off)):.0f} ms apart (the voices' "
            f"{r.first_byte_ms[1] - r.first_byte_ms[0]:.0f} ms difference in first byte, "
            "and the rest of their path), with sync "
            f"{float(np.median(bare_on)):.2f} ms."
        )
    text += (
        f" **The cost** is the lead: with the chime the first sound comes {med['late_on']:.0f} "
        f"ms after the publish with sync and {med['late_off']:.0f} ms without, "
        f"{med['late_on'] - med['late_off']:.0f} ms more: `lead_ms` ({r.lead_ms}) from the "
        "moment the first room begins the announcement, to cover the "
        f"{r.settle_ms:.0f} ms wait for the other rooms' proposals, a voice's first byte (when "
        "there is no chime), an amplifier's warm-up and the ducking."
    )
    bare_late_on, bare_late_off = pooled("latency", True, False), pooled("latency", False, False)
    if bare_late_on and bare_late_off:
        text += (
            f" Without a chime: {float(np.median(bare_late_on)):.0f} ms with sync, "
            f"{float(np.median(bare_late_off)):.0f} ms without (the fastest voice's first byte "
            "and the path to the sink)."
        )
    placed = [v for s in r.series if s.sync for v in s.values("placed")]
    if placed:
        text += (
            f" The first sound lands {abs(float(np.median(placed))):.1f} ms from the agreed "
            f"instant on the sink's clock at the median ({min(placed):.1f} to "
            f"{max(placed):.1f}; this timing's ±5 ms and `sync_at`'s 1 ms steps apply)."
        )
    return text


def _rooms_budget(r: RoomsResult) -> str:
    """The error budget between hosts on a LAN: what this part measures and what it cannot."""
    return (
        "**The error budget across hosts on a LAN** (sources in "
        "[docs/rooms.md](../docs/rooms.md#the-error-budget-across-hosts-on-a-lan)). Measured "
        "here: rooms that share one kernel clock and one PulseAudio server, so the clock term "
        "is zero and the output chains are identical: the figures above are Herald's "
        "agreement and placement alone. Between machines, three more terms add up, none of "
        "them measured here. *The clocks*: each room places its sound on its own clock, so "
        "two clocks' disagreement is added as it is; chrony on a wired LAN typically keeps a "
        "client within tens to hundreds of µs of its server, systemd-timesyncd (SNTP) within a "
        "few ms; a node whose clock the kernel does not call synchronized, or whose estimated "
        "error (chrony and ntpd give one, timesyncd does not) is over "
        "`sync.max_clock_error_ms` (10 ms by default), does not take part. *The network* is "
        f"not in the path of the sound: the instant is agreed ahead (`lead_ms` {r.lead_ms}), "
        f"and each room waits {r.settle_ms:.0f} ms for the others' proposals; MQTT's delay "
        "would matter only if a proposal took longer than that to arrive (that room would "
        "then start at its own, later instant). *The output*: Herald reads ALSA's delay, "
        "which covers alsa-lib, its plugins and a sound server's buffer as they report it; "
        "what the hardware adds after ALSA (a USB or HDMI device's own buffer, a Bluetooth "
        "link's 100 ms or more) is not visible to it, and is set per room in "
        "`audio.latency_offset_ms`. Two sound cards' crystals also drift apart by tens of "
        f"ppm, which the in-step correction puts back beyond {SYNC_SLACK_MS} ms. For scale: "
        "sound travels about 0.34 m in a millisecond."
    )


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
    if not sentences and results.sound is None:
        return []
    lines = ["## Reading", ""]
    if sentences:
        lines += [" ".join(sentences), ""]
    if results.sound is not None:
        lines += [_reading_sound(results.sound), ""]
    return lines


def _reading_sound(r: SoundResult) -> str:
    """How to read part 6, with its figures."""
    text = (
        "Part 6 reads in three steps. In its first table, *source LUFS* is how loud each "
        "voice, cached phrase or chime is as delivered, and the last two columns are how loud "
        "it is heard: the spread of the source column against that of the judged column is "
        "what the levelling does. A voice's first announcement is levelled by a prior (a "
        "guess) and is shown apart; from the second on Herald knows the voice."
    )
    verdicts = r.verdicts()
    if verdicts:
        failed = [v.criterion for v in verdicts if not v.passed]
        judged = [h.lufs for _, h in r.judged() if h.lufs is not None]
        text += (
            f" Here the judged announcements are heard at {min(judged):.1f} to "
            f"{max(judged):.1f} LUFS (target {r.target_lufs:.0f}); "
            + (
                "every target is met."
                if not failed
                else "not met: " + "; ".join(failed) + " (see the lines under the table)."
            )
        )
    text += (
        " The cut table compares the largest sample step a preemption leaves in what reached "
        "the sink with the largest step the speech itself has: at or below 1, the cut steps no "
        "further than the voice does on its own; *the fade heard* says whether the output's "
        f"{FADE_MS} ms fade reached the sink at all, and *the output's fade alone* is "
        "what it makes of the same cuts."
    )
    steps = r.cut_values("step")
    if steps and not r.device_problem:
        fades = r.cut_values("fade_ms")
        text += (
            f" Here the largest step at a cut is {np.median(steps):.0f} at the median and "
            f"{max(steps):.0f} at most ({max(steps) / (r.signal_step or 1):.2f} of the "
            f"signal's own {r.signal_step:.0f}), and the fade was heard in "
            f"{sum(1 for f in fades if f >= 1.0)} of {len(fades)} cuts."
        )
    text += (
        " The tail table is the share of an announcement's last 50 ms that reached the sink, "
        "with and without the silence Herald plays after the last sound."
    )
    with_tail, without = r.tail_values(r.tail_ms), r.tail_values(0)
    if with_tail and without:
        text += (
            f" Here the least received was {min(with_tail) * 100:.0f} % with {r.tail_ms} ms "
            f"and {min(without) * 100:.0f} % without."
        )
    return text


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
        "- Part 6's cloud voices are the tests' fakes, whose audio is a sine tone: their "
        "levelling is shown, not how a real service's speech varies from sentence to sentence "
        "(the scaled espeak-ng vendors stand in for that). Its cut and tail are what "
        "PulseAudio's null sink passed to its monitor, not what a sound card plays.",
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
        "fallback) is not counted."
        + (
            f" Part 6: {s.sound_announcements} announcements per voice, {s.sound_cuts} "
            f"preemption cuts, {s.sound_tails} announcements per `tail_ms` setting."
            if sound.PART in s.parts
            else ""
        )
        + (
            f" Part 7: {s.ducking_announcements} announcements per ducking backend (after one "
            "not counted)."
            if ducking.PART in s.parts
            else ""
        )
        + (
            f" Part 8: {s.rooms_announcements} announcements per group of rooms with sync, "
            f"{s.rooms_baseline} without."
            if rooms.PART in s.parts
            else ""
        )
        + (
            f" Part 9: {s.esphome_announcements} announcements through the ESPHome API (after "
            "one not counted)."
            if esphome.PART in s.parts
            else ""
        ),
        "",
    ]
    body = [
        *_ttfa(results),
        *_preempt(results),
        *_rotation(results),
        *_footprint(results),
        *_overload(results),
        *_sound(results),
        *_ducking(results),
        *_rooms(results),
        *esphome.section(
            results.esphome,
            results.failures.get(esphome.PART, "not run in this invocation (see --parts)"),
        ),
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
    if results.sound is not None:
        plot_sound(results.sound, out / SOUND_PLOT, s.smoke)
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


# --- part 6's plot ------------------------------------------------------------------------------


def _plot_loudness(ax: Axes, r: SoundResult) -> None:
    target = r.target_lufs
    ax.axvspan(target - 1.5, target + 1.5, color="green", alpha=0.12, label="target ±1.5 LU")
    ax.axvline(target, color="green", linewidth=1)
    labels = [src.label for src in r.sources]
    for y, src in enumerate(r.sources):
        sources = [h.source_lufs for h in src.heard if h.source_lufs is not None]
        ax.plot(sources, [y] * len(sources), "x", color="grey", markersize=5)
        judged = [h.lufs for h in src.judged if h.lufs is not None]
        ax.plot(judged, [y] * len(judged), "o", color="tab:blue", markersize=4)
        first = src.first
        if src.kind == "voice" and first is not None and first.lufs is not None:
            ax.plot([first.lufs], [y], "o", mfc="none", color="tab:orange", markersize=7)
    ax.plot([], [], "x", color="grey", label="as delivered (source)")
    ax.plot([], [], "o", mfc="none", color="tab:orange", label="heard: a voice's 1st (prior)")
    ax.plot([], [], "o", color="tab:blue", label="heard: judged")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("integrated loudness, LUFS (BS.1770, libebur128)")
    ax.set_title("6.1 Loudness as delivered and as heard")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def _plot_cut(ax: Axes, r: SoundResult) -> None:
    title = "6.2 The cut with the largest step"
    e = r.example
    if e is None:
        _empty(ax, title, r.device_problem or "no cut measured")
        return
    ms = (np.arange(len(e.recorded)) + e.start) / sound.RATE * 1000
    ax.plot(ms, e.signal, color="grey", linewidth=0.8, linestyle="--", label="the signal")
    ax.plot(ms, e.offline, color="tab:orange", linewidth=1, label="the output's fade alone")
    ax.plot(ms, e.recorded, color="tab:blue", linewidth=1.2, label="recorded on the sink")
    ax.set_xlabel("ms into the signal")
    ax.set_ylabel("sample (int16)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)


def _plot_steps(ax: Axes, r: SoundResult) -> None:
    title = "6.2 Largest step at each cut"
    cuts = [c for c in r.cuts if not c.problem and c.step is not None]
    if r.device_problem or not cuts:
        _empty(ax, title, r.device_problem or "no cut measured")
        return
    x = np.arange(len(cuts))
    series = [
        ("recorded on the sink", [c.step or 0.0 for c in cuts], "o"),
        ("the output's fade alone", [c.offline_step or 0.0 for c in cuts], "s"),
        ("the signal's own, there", [c.local_step for c in cuts], "_"),
    ]
    for label, values, marker in series:
        ax.plot(x, values, marker, label=label, markersize=6, alpha=0.8)
    ax.axhline(r.signal_step, color="grey", linestyle=":", label="the signal's largest step")
    ax.set_ylim(bottom=0)
    ax.set_xticks(x, [str(k + 1) for k in x])
    ax.set_xlabel("cut")
    ax.set_ylabel("|x[n+1] - x[n]| (int16)")
    ax.set_title(title)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)


def _plot_tail(ax: Axes, r: SoundResult) -> None:
    title = "6.3 The marker (last 50 ms) received"
    if r.device_problem or not r.tails:
        _empty(ax, title, r.device_problem or "not measured")
        return
    for x, tail_ms in enumerate((r.tail_ms, 0)):
        values = [v * 100 for v in r.tail_values(tail_ms)]
        ax.plot([x] * len(values), values, "o", alpha=0.6)
    ax.set_xticks([0, 1], [f"tail_ms = {r.tail_ms}", "tail_ms = 0"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of the marker's energy")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_sound(r: SoundResult, path: Path, smoke: bool = False) -> None:
    figure = plt.figure(figsize=(9, 11))
    grid = figure.add_gridspec(3, 2, height_ratios=[1.6, 1, 1])
    _plot_loudness(figure.add_subplot(grid[0, :]), r)
    _plot_cut(figure.add_subplot(grid[1, :]), r)
    _plot_steps(figure.add_subplot(grid[2, 0]), r)
    _plot_tail(figure.add_subplot(grid[2, 1]), r)
    figure.suptitle(
        f"Herald benchmark, part 6: sound (target {r.target_lufs:.0f} LUFS, ceiling "
        f"{r.ceiling_dbtp:.0f} dBTP){' (smoke mode)' if smoke else ''}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
