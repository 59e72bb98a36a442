"""The gateway as its source behaves (docs/protocols.md, "The self-hosted gateway"): done after
little or no audio, syntheses that die silently, 16 kHz whatever TTS_SAMPLE_RATE says, done after
cancel, empty frames, one provider shared by every connection, and a cache that keeps cut-off
audio. Each is a variant of tests/fake_gateway.py, spoken through a real Speaker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from herald.announcement import Announcement
from herald.config import EspeakConfig, GatewayConfig
from herald.events import Event
from herald.speaker import Delivery, Speaker
from herald.voice import gateway, voices_running
from herald.voice.base import Voice, VoiceError
from herald.voice.cache import PhraseCache
from herald.voice.cached import CachedVoice, with_phrase_cache
from herald.voice.espeak import EspeakVoice
from herald.voice.gateway import GatewayVoice
from tests.fake_deepgram import synthesize
from tests.fake_gateway import FakeGateway, FakeGatewayOptions, provider_preset
from tests.fake_slng import RecordingSink

RATE = 24000
# About 4.8 s of the fake's audio: a quarter of it is far shorter than any voice could say it in.
TEXT = "The washing machine has finished its cycle, and the laundry can be hung up now."
FIRST_AUDIO_S, STALL_S = 1.0, 0.5


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def fast(**overrides: Any) -> FakeGatewayOptions:
    return FakeGatewayOptions(**{"first_byte_s": 0.01, **overrides})


def settings(server: FakeGateway, **overrides: Any) -> GatewayConfig:
    return GatewayConfig(
        **{
            "url": server.url,
            "first_audio_timeout_s": FIRST_AUDIO_S,
            "stall_timeout_s": STALL_S,
            **overrides,
        }
    )


class Rig:
    """A Speaker with the gateway, then espeak-ng; a phrase cache; what it played and said."""

    def __init__(self, voices: list[Voice], cache: PhraseCache) -> None:
        self.sink = RecordingSink()
        self.events: list[Event] = []
        self.cache = cache
        self.voices = with_phrase_cache(voices, cache)
        self.speaker = Speaker(self.voices, self.sink, self.events.append, Delivery(RATE))

    async def say(self, announcement_id: str, text: str = TEXT) -> str:
        """Speak it; the voice that finished it."""
        self.sink.reset()
        assert await self.speaker.speak(Announcement(announcement_id, text))
        for voice in self.voices:
            if isinstance(voice, CachedVoice):
                await voice.written()
        [finished] = [
            e for e in self.events if e.kind == "finished" and e.announcement_id == announcement_id
        ]
        return str(finished.details["voice"])

    def kept(self) -> list[tuple[str, str]]:
        return [(entry.key.engine, entry.key.text) for entry in self.cache.entries()]


@contextlib.asynccontextmanager
async def rigged(server: FakeGateway, tmp_path: Path, **overrides: Any) -> AsyncIterator[Rig]:
    voices: list[Voice] = [
        GatewayVoice(settings(server, **overrides), RATE),
        EspeakVoice(EspeakConfig(), RATE),
    ]
    rig = Rig(voices, PhraseCache(tmp_path, 10_000_000, RATE, {"gateway": "the fake"}))
    async with voices_running(voices):
        await server.wait_for_connections(1)
        yield rig


async def connect_and_leave(server: FakeGateway) -> None:
    """Another client of the gateway comes and goes: its disconnect calls the provider's close()."""
    before, open_before = server.connections, server.open_connections
    async with connect(server.url):
        await server.wait_until(lambda: server.connections > before)
    await server.wait_until(lambda: server.open_connections == open_before)


# --- pure: judging the audio ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio_s", "text", "truncated"),
    [
        (0.0, TEXT, True),  # done after no audio
        (1.2, TEXT, True),  # a quarter of the fake's 4.8 s
        (len(TEXT) / 28, TEXT, False),  # a voice at double speed (28 characters a second)
        (len(TEXT) / 14, TEXT, False),  # ordinary speech
        (0.0, "...", False),  # nothing to say: no audio is right
        (0.3, "OK.", False),
    ],
)
def test_truncation_is_judged_with_a_bound_no_voice_reaches(
    audio_s: float, text: str, truncated: bool
) -> None:
    assert gateway.looks_truncated(audio_s, text) is truncated


@pytest.mark.parametrize(
    ("pace", "heard", "configured", "looks"),
    [
        (1.0, 16000, 16000, None),
        (1.0, 24000, 24000, None),
        (1.15, 24000, 24000, None),  # a slow voice at the right rate
        (0.85, 48000, 48000, None),  # a quick one
        (1.0, 16000, 24000, 16000),  # OpenAI behind a gateway set to 24000
        (0.85, 16000, 24000, 16000),
        (1.15, 16000, 24000, 16000),
        (1.0, 24000, 16000, 24000),
        (1.0, 24000, 48000, 24000),
        (1.0, 22050, 24000, None),  # too close to tell by length
    ],
)
def test_the_rate_the_audio_looks_like(
    pace: float, heard: int, configured: int, looks: int | None
) -> None:
    real_s = pace * len(gateway.CHECK_PHRASE) / 14  # the phrase as a voice says it
    read_s = real_s * heard / configured  # ... read at the configured rate
    assert gateway.rate_looks_like(read_s, gateway.CHECK_PHRASE, configured) == looks


def test_speech_seconds_leave_out_the_quiet_before_and_after() -> None:
    tone = np.frombuffer(synthesize("A tone.", RATE), dtype="<i2")
    quiet = np.zeros(RATE // 2, dtype=np.int16)
    padded = np.concatenate([quiet, tone, quiet])
    assert abs(gateway.speech_seconds(padded, RATE) - len(tone) / RATE) < 0.01
    assert gateway.speech_seconds(quiet, RATE) == 0.0


def test_max_age_zero_keeps_the_socket_for_good() -> None:
    assert GatewayConfig().max_age_s == 0
    assert GatewayVoice(GatewayConfig(), RATE).keeper.spec.max_age_s >= 365 * 86400
    assert GatewayVoice(GatewayConfig(max_age_s=600), RATE).keeper.spec.max_age_s == 600


# --- done after little or no audio ----------------------------------------------------------------


@pytest.mark.parametrize("after", [0.0, 0.25])
def test_done_after_little_or_no_audio_is_spoken_again_by_the_next_voice_and_not_kept(
    after: float, tmp_path: Path
) -> None:
    async def scenario() -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]], int]:
        async with (
            FakeGateway(fast(failure="done", failure_after=after)) as server,
            rigged(server, tmp_path) as rig,
        ):
            voices = [await rig.say("a1")]
            kept_after_failure = rig.kept()
            server.options.failure = None
            voices.append(await rig.say("a2"))
            heard = rig.sink.samples()
            assert np.array_equal(heard, np.frombuffer(synthesize(TEXT, RATE), dtype="<i2"))
            return voices, kept_after_failure, rig.kept(), server.connections

    voices, kept_after_failure, kept, connections = run(scenario())
    assert voices == ["espeak", "gateway"]
    assert kept_after_failure == []  # neither the cut-off gateway audio nor espeak-ng's
    assert kept == [("gateway", TEXT)]  # the whole of it, once the gateway said it all
    assert connections == 1  # `done` left the socket clean: it is kept


@pytest.mark.parametrize("seconds_per_char", [0.06, 0.036])  # the fake's pace; double speed
def test_a_fast_voice_is_not_judged_truncated(seconds_per_char: float, tmp_path: Path) -> None:
    async def scenario() -> str:
        options = fast(seconds_per_char=seconds_per_char)
        async with FakeGateway(options) as server, rigged(server, tmp_path) as rig:
            return await rig.say("a1")

    assert run(scenario()) == "gateway"


# --- a synthesis that dies silently ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "empty_frames"),
    [(0.0, False), (0.25, False), (0.0, True)],  # before any audio, halfway, OpenAI's b"" first
)
def test_a_synthesis_that_goes_silent_fails_over_in_bounded_time(
    after: float, empty_frames: bool, tmp_path: Path
) -> None:
    options = fast(failure="silent", failure_after=after, empty_frames=empty_frames)

    async def scenario() -> tuple[list[str], float, FakeGateway]:
        async with FakeGateway(options) as server, rigged(server, tmp_path) as rig:
            started = time.monotonic()
            voices = [await rig.say("a1")]
            waited = time.monotonic() - started
            assert rig.kept() == []
            await server.wait_until(lambda: server.connections == 2)  # a fresh socket
            server.options.failure = None
            voices.append(await rig.say("a2"))
            return voices, waited, server

    voices, waited, server = run(scenario())
    assert voices == ["espeak", "gateway"]
    assert server.silent_deaths == 1
    bound = STALL_S if after else FIRST_AUDIO_S
    assert bound <= waited < bound + 3.0  # the timeout, then espeak-ng says it


# --- the rate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sends", "configured", "looks"),
    [(16000, 24000, 16000), (24000, 16000, 24000), (16000, 16000, None), (24000, 24000, None)],
)
@pytest.mark.parametrize("seconds_per_char", [0.06, 1 / 14, 0.08])
def test_check_says_which_rate_the_audio_looks_like(
    sends: int, configured: int, looks: int | None, seconds_per_char: float
) -> None:
    # The gateway's TTS_SAMPLE_RATE is 24000; with OpenAI it sends 16000 all the same.
    options = fast(sample_rate=24000, sends_rate=sends, seconds_per_char=seconds_per_char)

    async def scenario() -> str:
        async with FakeGateway(options) as server:
            voice = GatewayVoice(GatewayConfig(url=server.url, sample_rate=configured), 48000)
            try:
                return await voice.check()
            except VoiceError as exc:
                return f"failed: {exc}"

    said = run(scenario())
    if looks is None:
        assert said.startswith("ws://") and f"at {configured} Hz" in said
    else:
        assert said.startswith("failed: ")
        assert f"seems to send {looks} Hz" in said
        assert said.endswith(f"set voice.gateway.sample_rate = {looks}")
        assert "\n" not in said


def test_openai_audio_with_its_empty_frames_is_heard_whole_at_16000() -> None:
    async def scenario() -> bytes:
        async with FakeGateway(provider_preset("openai", first_byte_s=0.01)) as server:
            voice = GatewayVoice(GatewayConfig(url=server.url, sample_rate=16000), 16000)
            keeping = asyncio.create_task(voice.run())
            try:
                chunks = [chunk async for chunk in voice.stream(TEXT)]
            finally:
                keeping.cancel()
            return b"".join(chunk.astype("<i2").tobytes() for chunk in chunks)

    assert run(scenario()) == synthesize(TEXT, 16000)


# --- one provider shared by every connection ------------------------------------------------------


def test_another_client_leaving_breaks_openai_and_a_fresh_socket_mends_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], FakeGateway]:
        options = provider_preset("openai", first_byte_s=0.01)
        async with (
            FakeGateway(options) as server,
            rigged(server, tmp_path, sample_rate=16000) as rig,
        ):
            await connect_and_leave(server)
            assert server.broken
            voices = [await rig.say("a1")]  # dies silently: espeak-ng says it
            await server.wait_until(lambda: not server.broken)  # Herald's fresh socket
            voices.append(await rig.say("a2"))
            return voices, server

    voices, server = run(scenario())
    assert voices == ["espeak", "gateway"]
    assert server.silent_deaths == 1
    assert server.connections == 3  # Herald's, the other client's, and Herald's fresh one


def test_another_client_leaving_cuts_elevenlabs_audio_and_the_next_voice_says_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[str], FakeGateway]:
        options = provider_preset("elevenlabs", first_byte_s=0.01, pace=1.0)
        async with FakeGateway(options) as server, rigged(server, tmp_path) as rig:
            saying = asyncio.create_task(rig.say("a1"))
            await server.wait_until(lambda: server.syntheses == 1)
            await asyncio.sleep(0.3)  # a little of the audio
            await connect_and_leave(server)
            voices = [await saying]
            assert rig.kept() == []
            voices.append(await rig.say("a2", "Said whole."))
            return voices, server

    voices, server = run(scenario())
    assert voices == ["espeak", "gateway"]
    assert server.connections == 2  # Herald's socket was kept


# --- stops keep the socket ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "elevenlabs"])  # no done after cancel; a done
@pytest.mark.parametrize("late_s", [0.0, 0.8])  # the done at once, or after cancel_wait_s
def test_a_stop_keeps_the_socket_and_no_stale_audio_follows(provider: str, late_s: float) -> None:
    options = provider_preset(
        provider, first_byte_s=0.01, pace=1.0, sends_rate=None, cancel_done_delay_s=late_s
    )

    async def scenario() -> tuple[list[bytes], FakeGateway]:
        async with FakeGateway(options) as server:
            voice = GatewayVoice(GatewayConfig(url=server.url), RATE)
            keeping = asyncio.create_task(voice.run())
            try:
                heard = []
                for n in range(3):
                    stream = voice.stream(f"A long gateway announcement {n} that is interrupted.")
                    for _ in range(3):
                        await anext(stream)
                    await stream.aclose()  # what a preemption or a stop does
                    await asyncio.sleep(0.5)  # the next announcement comes a moment later
                    text = f"Second {n}."
                    chunks = [chunk async for chunk in voice.stream(text)]
                    heard.append(b"".join(chunk.astype("<i2").tobytes() for chunk in chunks))
                return heard, server
            finally:
                keeping.cancel()

    heard, server = run(scenario())
    assert heard == [synthesize(f"Second {n}.", RATE) for n in range(3)]  # nothing stale
    assert server.types_received("action") == ["synthesize", "cancel", "synthesize"] * 3
    assert server.connections == 1
    sent_done = sum(message == {"action": "done"} for _, message in server.sent)
    assert sent_done == (6 if provider == "elevenlabs" else 3)


# --- the gateway's own cache ----------------------------------------------------------------------


@pytest.mark.parametrize("cache_partial", [True, False])  # ElevenLabs & co.; OpenAI
def test_a_phrase_the_gateway_cached_cut_off_is_said_by_the_next_voice(
    cache_partial: bool, tmp_path: Path
) -> None:
    options = fast(pace=1.0, gateway_cache=True, cache_partial=cache_partial)

    async def scenario() -> tuple[str, list[tuple[str, str]], FakeGateway]:
        async with FakeGateway(options) as server, rigged(server, tmp_path) as rig:
            saying = asyncio.create_task(rig.speaker.speak(Announcement("a1", TEXT)))
            await server.wait_until(lambda: server.syntheses == 1)
            await asyncio.sleep(0.3)
            saying.cancel()  # a stop: the gateway keeps what it sent so far
            with pytest.raises(asyncio.CancelledError):
                await saying
            voice = await rig.say("a2")
            return voice, rig.kept(), server

    voice, kept, server = run(scenario())
    whole = synthesize(TEXT, RATE)
    if cache_partial:  # the gateway replays its cut-off copy: too short, and not kept
        assert whole.startswith(server.cache[TEXT]) and len(server.cache[TEXT]) < len(whole) / 3
        assert voice == "espeak" and kept == []
    else:  # nothing kept on the cancel: the gateway says it all again
        assert server.cache[TEXT] == whole
        assert voice == "gateway" and kept == [("gateway", TEXT)]
    assert server.connections == 1
