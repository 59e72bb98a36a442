"""Part 9: the ESPHome media player (issue 19): from the client's `play_media` to the first sound.

A daemon with `[esphome] enabled = true` plays on `herald_paced` (ALSA's PulseAudio plugin into
the workspace's null sink, real time), recorded from the sink's monitor as in part 2.
aioesphomeapi's client, the library Home Assistant's ESPHome integration is built on, sends
`media_player_command(media_url=..., announcement=True)` for a WAV served on loopback (what Home
Assistant's proxy would serve: 16-bit mono at the output's rate, 1 s of a tone), one at a time,
each once the player is idle again. Measured: from just before the command to the first sample
above the threshold in the recording, on the benchmark's monotonic clock. The first is not
counted (the first connection to the HTTP server and the output's first start).

What is not here: Home Assistant itself (its ffmpeg proxy adds its own time to fetch and convert
the media; tests/test_esphome_ha.py plays through it, untimed).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.common import SOUND_THRESHOLD, HeraldProcess, Summary, Workspace, log
from bench.preempt import MonitorRecorder, sink_latency_s
from bench.settings import Settings
from tests.support import RATE, PulseServer, free_port, media_server, tone_wav

PART = "esphome"
WARMUP = 1
TONE_HZ, TONE_S = 880.0, 1.0
IDLE_TIMEOUT_S = 20.0
GAP_S = 0.3  # after the player is idle, before the next command


@dataclass
class EsphomeResult:
    announcements: int
    warmup: int
    sink_latency_ms: float = 0.0
    published: list[float] = field(default_factory=list)  # monotonic, just before each command
    ended: list[float] = field(default_factory=list)  # when the player was idle again
    first_sound_ms: list[float] = field(default_factory=list)  # counted ones only
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def summary(self) -> Summary | None:
        return Summary.of(self.first_sound_ms)


async def _play_all(port: int, base: str, count: int, result: EsphomeResult) -> None:
    from aioesphomeapi.client import APIClient
    from aioesphomeapi.model import MediaPlayerEntityState, MediaPlayerInfo, MediaPlayerState

    client = APIClient("127.0.0.1", port, None, client_info="herald-bench")
    await client.connect(login=True)
    try:
        entities, _ = await client.list_entities_services()
        key = next(e.key for e in entities if isinstance(e, MediaPlayerInfo))
        states: list[tuple[float, Any]] = []
        changed = asyncio.Event()

        def on_state(state: object) -> None:
            if isinstance(state, MediaPlayerEntityState):
                states.append((time.monotonic(), state.state))
                changed.set()

        client.subscribe_states(on_state)
        for n in range(count):
            seen = len(states)
            result.published.append(time.monotonic())
            client.media_player_command(key, media_url=f"{base}/tone.wav?n={n}", announcement=True)
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                while not (
                    any(s is MediaPlayerState.PLAYING for _, s in states[seen:])
                    and states[-1][1] is MediaPlayerState.IDLE
                ):
                    changed.clear()
                    await changed.wait()
            result.ended.append(states[-1][0])
            await asyncio.sleep(GAP_S)
    finally:
        await client.disconnect()


def _first_sounds(result: EsphomeResult, recorder: MonitorRecorder) -> None:
    x = recorder.samples()
    ahead_s = result.sink_latency_ms / 1000
    for n, (published, ended) in enumerate(zip(result.published, result.ended, strict=False)):
        try:
            zero = recorder.time_of_sample_zero(published - 1, ended) + ahead_s
        except ValueError:
            result.problems.append(f"announcement {n}: not in the recording")
            continue
        start = max(round((published - zero) * RATE), 0)
        end = min(round((ended - zero) * RATE), x.size)
        loud = np.flatnonzero(np.abs(x[start:end]) > SOUND_THRESHOLD)
        if not loud.size:
            result.problems.append(f"announcement {n}: no sound in the recording")
            continue
        if n >= result.warmup:
            first = zero + (start + int(loud[0])) / RATE
            result.first_sound_ms.append((first - published) * 1000)


def run(ws: Workspace, settings: Settings, rng: random.Random) -> EsphomeResult:
    began = time.monotonic()
    result = EsphomeResult(settings.esphome_announcements, WARMUP)
    port = free_port()
    herald = HeraldProcess(
        ws,
        PART,
        "herald_paced",
        "ws://127.0.0.1:9",
        extra=f"tail_ms = 0\n[esphome]\nenabled = true\nport = {port}\nmdns = false\n",
    )
    pulse = PulseServer(ws.config_home)
    recorder = MonitorRecorder(pulse)
    try:
        pulse.start()
        recorder.start()
        result.sink_latency_ms = sink_latency_s(pulse) * 1000
        herald.start()
        log(f"{PART}: {result.warmup} + {result.announcements} announcements")
        with media_server(tone_wav(TONE_HZ, TONE_S)) as media:
            asyncio.run(_play_all(port, media.url, result.warmup + result.announcements, result))
        time.sleep(0.3)  # the last sound reaches the recording
    except Exception as exc:
        result.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        herald.stop()
        recorder.stop()
        pulse.stop()
        with (ws.root / f"herald-{PART}.log").open("w") as kept:
            kept.write("\n".join([*herald.lines(), ""]))
    _first_sounds(result, recorder)
    result.seconds = time.monotonic() - began
    return result


def section(result: EsphomeResult | None, why_not: str) -> list[str]:
    """The report's part 9."""
    lines = ["## 9. Home Assistant media player (ESPHome API)", ""]
    if result is None:
        return [*lines, f"No figures: {why_not}", ""]
    s = result.summary
    lines += [
        "From aioesphomeapi's `media_player_command(media_url=..., announcement=True)` (the "
        "client Home Assistant's ESPHome integration uses) to the first sound in the recording "
        "of a real-time PulseAudio sink, for a 1 s WAV served on loopback; one at a time, each "
        f"when the player is idle again; {result.warmup} not counted.",
        "",
        "| measure | n | p50 ms | p95 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    if s is None:
        lines.append("| **command → first sound** | 0 | — | — | — |")
    else:
        lines.append(
            f"| **command → first sound** | {s.n} | {s.p50:.1f} | {s.p95:.1f} | {s.max:.1f} |"
        )
    lines += [
        "",
        "What bounds it: the queue's turn and the announcement's start (no chime for media), the "
        "download's first bytes and the WAV header, the loudness limiter's look-ahead (about "
        "5.5 ms), ALSA's buffer (4 periods of 20 ms) and the sink's own latency "
        f"({result.sink_latency_ms:.0f} ms, taken off the recording's timing). Home Assistant's "
        "ffmpeg proxy, in front of a real Home Assistant, adds its own start-up before the first "
        "bytes.",
        "",
    ]
    if result.problems:
        lines += ["Problems: " + "; ".join(result.problems[:5]), ""]
    return lines
