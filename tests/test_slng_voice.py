"""The SLNG voice: its pure protocol, and the voice against the fake SLNG gateway on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from herald.announcement import Announcement
from herald.checks import check_secrets
from herald.config import ConfigError, EspeakConfig, SlngConfig, parse_config
from herald.events import Event
from herald.speaker import Delivery, Speaker
from herald.voice import slng, voices_running
from herald.voice.base import Voice, VoiceError
from herald.voice.espeak import EspeakVoice
from herald.voice.protocol import FailureKind
from herald.voice.slng import SlngVoice
from tests.fake_deepgram import dominant_hz, synthesize, tone_hz
from tests.fake_slng import FakeSlng, FakeSlngOptions, RecordingSink

RATE = 24000  # the fake's rate and the output's: no resampling, so audio compares byte for byte
KEY = "slng-test-key"


def config(server: FakeSlng, **overrides: Any) -> SlngConfig:
    return SlngConfig(url=server.template, **overrides)


@contextlib.asynccontextmanager
async def warm_voice(
    server: FakeSlng, key: str = KEY, rate: int = RATE, **overrides: Any
) -> AsyncIterator[SlngVoice]:
    voice = SlngVoice(config(server, **overrides), key, rate)
    keeping = asyncio.create_task(voice.run())
    try:
        yield voice
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping


async def speak(voice: Voice, text: str) -> bytes:
    chunks = [chunk async for chunk in voice.stream(text)]
    return b"".join(chunk.astype("<i2").tobytes() for chunk in chunks)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def fast(**overrides: Any) -> FakeSlngOptions:
    return FakeSlngOptions(**{"first_byte_s": 0.01, **overrides})


# --- the protocol, pure ---------------------------------------------------------------------------


def test_the_url_and_init_name_provider_model_variant_and_voice() -> None:
    cfg = SlngConfig(provider="slng/rime", model="arcana", variant="3-en", voice="luna")
    assert cfg.socket_url == "wss://api.slng.ai/v1/tts/slng/rime/arcana:3-en"
    assert json.loads(slng.init(cfg)) == {
        "type": "init",
        "model": "arcana:3-en",
        "voice": "luna",
        "config": {"encoding": "linear16", "sample_rate": 24000},
    }
    tuned = SlngConfig(language="de", speed=1.2, sample_rate=16000)
    assert json.loads(slng.init(tuned))["config"] == {
        "encoding": "linear16",
        "sample_rate": 16000,
        "language": "de",
        "speed": 1.2,
    }


def test_a_url_template_with_an_unknown_placeholder_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"voice": {"slng": {"url": "wss://x/{provder}/{model}"}}}, "t.toml")
    assert caught.value.lines == [
        "config error: t.toml: voice.slng.url: unknown placeholder {provder}: "
        "use {provider}, {model}, {variant}"
    ]


def test_decode_reads_binary_and_base64_audio_and_every_server_message() -> None:
    assert slng.decode(b"\x01\x02") == slng.Audio(b"\x01\x02")
    chunk = json.dumps({"type": "audio_chunk", "data": "AQI=", "sequence": 3})
    assert slng.decode(chunk) == slng.Audio(b"\x01\x02")
    assert slng.decode('{"type": "ready", "session_id": "s1"}') == slng.Ready("s1")
    assert slng.decode('{"type": "flushed"}') == slng.End("flushed")
    assert slng.decode('{"type": "audio_end", "duration": 3.5}') == slng.End("audio_end")
    assert slng.decode('{"type": "cleared"}') == slng.Cleared()
    error = '{"type": "error", "code": "provider_error", "message": "Upstream unavailable"}'
    assert slng.decode(error) == slng.Error("provider_error", "Upstream unavailable")
    assert isinstance(slng.decode('{"type": "segment_start", "segment_id": "a"}'), slng.Other)
    assert isinstance(slng.decode("not json"), slng.Other)
    assert isinstance(slng.decode('{"type": "audio_chunk", "data": "%%%"}'), slng.Error)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("auth_error", FailureKind.AUTH),
        ("config_error", FailureKind.CONFIG),
        ("rate_limit", FailureKind.RATE_LIMITED),
        ("provider_error", FailureKind.TRANSIENT),
        ("something_new", FailureKind.TRANSIENT),
    ],
)
def test_error_codes_map_to_the_failure_kinds_deepgram_uses(code: str, kind: FailureKind) -> None:
    assert slng.classify_error(code, "detail").kind is kind


def test_handshake_statuses_and_close_codes_are_classified() -> None:
    assert slng.classify_handshake(401, None).kind is FailureKind.AUTH
    assert slng.classify_handshake(404, None).kind is FailureKind.CONFIG
    assert slng.classify_handshake(429, None).kind is FailureKind.RATE_LIMITED
    assert slng.classify_handshake(503, None).kind is FailureKind.TRANSIENT
    assert slng.classify_close(1000, "").kind is FailureKind.TRANSIENT
    assert slng.classify_close(4001, "unauthorized").kind is FailureKind.AUTH
    assert slng.classify_close(None, "").kind is FailureKind.TRANSIENT


# --- against the fake -----------------------------------------------------------------------------


def test_init_waits_for_ready_and_one_warm_socket_speaks_each_announcement() -> None:
    async def scenario() -> FakeSlng:
        async with FakeSlng(fast()) as server, warm_voice(server) as voice:
            await server.wait_until(lambda: any(m["type"] == "ready" for _, m in server.sent))
            for n in range(3):
                text = f"Announcement number {n}."
                assert await speak(voice, text) == synthesize(text, RATE)
            return server

    server = run(scenario())
    assert server.connections == 1
    assert server.paths == ["/v1/tts/deepgram/aura:2"]
    assert server.inits == [
        {
            "type": "init",
            "model": "aura:2",
            "voice": "aura-2-thalia-en",
            "config": {"encoding": "linear16", "sample_rate": 24000},
        }
    ]
    assert server.types_received() == ["init"] + ["text", "flush"] * 3 + ["close"]


@pytest.mark.parametrize("binary_audio", [True, False], ids=["binary", "audio_chunk"])
@pytest.mark.parametrize("audio_end", [False, True], ids=["flushed", "flushed+audio_end"])
def test_binary_and_base64_audio_sound_the_same_and_end_markers_end_only_their_own(
    binary_audio: bool, audio_end: bool
) -> None:
    options = fast(binary_audio=binary_audio, audio_end=audio_end)

    async def scenario() -> None:
        async with FakeSlng(options) as server, warm_voice(server) as voice:
            for text in ("First one.", "Second one.", "Third one."):
                assert await speak(voice, text) == synthesize(text, RATE)

    run(scenario())


def test_audio_is_resampled_to_the_output_rate() -> None:
    async def scenario() -> np.ndarray:
        async with FakeSlng(fast()) as server, warm_voice(server, rate=48000) as voice:
            return np.frombuffer(await speak(voice, "Resampled."), dtype="<i2")

    audio = run(scenario())
    assert abs(len(audio) / 48000 - len(synthesize("Resampled.", RATE)) / 2 / RATE) < 0.01
    assert abs(dominant_hz(audio, 48000) - tone_hz("Resampled.")) < 3


async def interrupt_after(voice: SlngVoice, text: str, chunks: int) -> None:
    stream = voice.stream(text)
    for _ in range(chunks):
        await anext(stream)
    await stream.aclose()  # what a preemption or a stop does


def test_stopping_mid_stream_cancels_and_clears_and_no_stale_audio_follows() -> None:
    async def scenario() -> tuple[bytes, FakeSlng, SlngVoice]:
        async with FakeSlng(fast(pace=1.0)) as server, warm_voice(server) as voice:
            await interrupt_after(voice, "A long first announcement, interrupted.", 3)
            return await speak(voice, "Second."), server, voice

    after, server, voice = run(scenario())
    assert after == synthesize("Second.", RATE)  # not one stale sample before it
    sent = server.types_received()
    assert sent == ["init", "text", "flush", "cancel", "clear", "text", "flush", "close"]
    assert server.connections == 1
    assert voice.cancel_supported is True


def test_an_error_answering_cancel_means_unsupported_and_it_is_never_sent_again() -> None:
    async def scenario() -> tuple[list[bytes], FakeSlng, SlngVoice]:
        options = fast(pace=1.0, cancel_supported=False)
        async with FakeSlng(options) as server, warm_voice(server) as voice:
            heard = []
            for n in range(2):
                await interrupt_after(voice, f"Long announcement {n} to interrupt.", 2)
                heard.append(await speak(voice, f"After {n}."))
            return heard, server, voice

    heard, server, voice = run(scenario())
    assert heard == [synthesize("After 0.", RATE), synthesize("After 1.", RATE)]
    assert voice.cancel_supported is False
    assert server.types_received().count("cancel") == 1
    assert server.types_received()[-6:] == ["text", "flush", "clear", "text", "flush", "close"]
    assert server.connections == 1  # an unsupported cancel costs no socket


def test_keepalive_while_idle_keeps_an_upstream_idle_timeout_from_closing_the_socket() -> None:
    async def scenario() -> tuple[FakeSlng, bytes]:
        async with (
            FakeSlng(fast(idle_timeout_s=0.6)) as server,
            warm_voice(server, keepalive_s=0.2) as voice,
        ):
            await server.wait_until(lambda: server.types_received().count("keepalive") >= 6)
            return server, await speak(voice, "Still warm.")

    server, audio = run(scenario())
    assert audio == synthesize("Still warm.", RATE)
    assert server.connections == 1
    assert (1011, "idle timeout") not in server.close_log


def test_without_keepalive_the_idle_upstream_closes_and_a_fresh_socket_follows() -> None:
    async def scenario() -> tuple[FakeSlng, bytes]:
        async with (
            FakeSlng(fast(idle_timeout_s=0.4)) as server,
            warm_voice(server, keepalive_s=0) as voice,
        ):
            await server.wait_until(lambda: server.connections >= 2 and server.open_connections > 0)
            return server, await speak(voice, "After an idle close.")

    server, audio = run(scenario())
    assert audio == synthesize("After an idle close.", RATE)
    assert (1011, "idle timeout") in server.close_log


def test_an_error_answering_keepalive_means_unsupported_and_it_stops() -> None:
    async def scenario() -> tuple[FakeSlng, SlngVoice, bytes]:
        async with (
            FakeSlng(fast(keepalive_supported=False)) as server,
            warm_voice(server, keepalive_s=0.1) as voice,
        ):
            await server.wait_until(lambda: any(m["type"] == "error" for _, m in server.sent))
            await asyncio.sleep(0.5)  # five more idle periods: none may send a keepalive
            return server, voice, await speak(voice, "No stale error.")

    server, voice, audio = run(scenario())
    assert voice.keepalive_supported is False
    assert server.types_received().count("keepalive") == 1
    assert audio == synthesize("No stale error.", RATE)
    assert server.connections == 1


def test_a_normal_close_after_each_utterance_is_replaced_at_once() -> None:
    options = fast(close_after_utterance=True, audio_end=True)

    async def scenario() -> tuple[FakeSlng, float]:
        async with FakeSlng(options) as server, warm_voice(server) as voice:
            started = time.monotonic()
            for n in range(5):
                text = f"Upstream closes after {n}."
                assert await speak(voice, text) == synthesize(text, RATE)
            return server, time.monotonic() - started

    server, took = run(scenario())
    assert server.connections >= 5
    assert server.close_log.count((1000, "")) >= 4
    assert took < 2.0  # no backoff: a normal close is not a failure


def test_a_socket_killed_mid_announcement_is_replayed_in_full() -> None:
    text = "This announcement is long enough to be cut in the middle by the network."

    async def scenario() -> tuple[bytes, int]:
        async with FakeSlng(fast(pace=1.0)) as server, warm_voice(server) as voice:
            received = []
            async for chunk in voice.stream(text):
                received.append(chunk.astype("<i2").tobytes())
                if len(received) == 4:
                    await server.kill_all()
            return b"".join(received), server.connections

    heard, connections = run(scenario())
    assert connections == 2
    assert heard.endswith(synthesize(text, RATE))  # from the start again, to the very end


def test_no_ready_within_the_bound_gives_the_next_voice_the_turn() -> None:
    async def scenario() -> tuple[str, str]:
        async with (
            FakeSlng(fast(send_ready=False)) as server,
            warm_voice(server, ready_timeout_s=0.3, connect_wait_s=1.0) as voice,
        ):
            with pytest.raises(VoiceError) as caught:
                await speak(voice, "Hello")
            return str(caught.value), voice.describe()

    message, described = run(scenario())
    assert "no 'ready' within 0.3 s of 'init'" in message + described


def test_an_init_error_is_a_config_failure_that_waits_for_a_person(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[str, FakeSlng, SlngVoice]:
        async with FakeSlng(fast()) as server, warm_voice(server, voice="no-such-voice") as voice:
            await server.wait_until(lambda: server.inits != [])
            await asyncio.sleep(0.3)
            with pytest.raises(VoiceError) as caught:
                await speak(voice, "Hello")
            return str(caught.value), server, voice

    with caplog.at_level(logging.INFO, logger="herald"):
        message, server, voice = run(scenario())
    assert "config error: config_error: unknown voice: no-such-voice" in message
    assert voice.keeper is not None and voice.keeper.last_failure is not None
    assert voice.keeper.last_failure.kind is FailureKind.CONFIG
    assert server.connections == 1  # retried every 5 minutes, not in a loop
    assert "retrying in 300 s" in caplog.text


def test_a_wrong_key_fails_fast_and_never_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[str, float]:
        async with FakeSlng(fast()) as server, warm_voice(server, key="wrong-key") as voice:
            await server.wait_until(lambda: server.refused >= 1)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(VoiceError) as caught:
                await speak(voice, "Hello")
            return str(caught.value), time.monotonic() - started

    with caplog.at_level(logging.DEBUG):
        message, took = run(scenario())
    assert "HTTP 401" in message and "the SLNG key was refused" in message
    assert took < 0.1
    assert "wrong-key" not in caplog.text


def test_without_a_key_the_voice_says_where_to_put_one() -> None:
    with pytest.raises(
        VoiceError,
        match=r"install.sh --slng-key-file FILE, or set voice.slng.api_key_file or \$SLNG_API_KEY",
    ):
        run(speak(SlngVoice(SlngConfig(), None, RATE), "Hello"))


@pytest.mark.parametrize(
    ("code", "errors_sent"),
    [("provider_error", 2), ("auth_error", 1)],
    ids=["transient-replayed-once", "auth-not-replayed"],
)
def test_a_server_error_hands_the_announcement_to_the_next_voice(
    code: str, errors_sent: int
) -> None:
    options = fast(flush_error=(code, "Upstream service unavailable"))

    async def scenario() -> tuple[list[Event], RecordingSink, FakeSlng]:
        async with FakeSlng(options) as server:
            voices: list[Voice] = [
                SlngVoice(config(server), KEY, RATE),
                EspeakVoice(EspeakConfig(), RATE),
            ]
            await_ready = server.wait_until(lambda: server.open_connections == 1)
            events: list[Event] = []
            sink = RecordingSink()
            async with voices_running(voices):
                await await_ready
                speaker = Speaker(voices, sink, events.append, Delivery(RATE))
                assert await speaker.speak(Announcement("a1", "Falling back."))
            return events, sink, server

    events, sink, server = run(scenario())
    assert [(e.kind, e.details.get("voice"), e.details.get("degraded")) for e in events] == [
        ("started", "espeak", True),
        ("finished", "espeak", True),
    ]
    assert len(sink.samples()) > 0.3 * RATE
    assert [m["code"] for _, m in server.sent if m["type"] == "error"] == [code] * errors_sent


def test_check_says_where_the_slng_key_comes_from_or_how_to_store_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_config({"voice": {"engines": ["slng", "espeak"]}}, "t.toml")
    monkeypatch.delenv("SLNG_API_KEY", raising=False)
    missing = next(r for r in check_secrets(config) if r.name == "SLNG key")
    assert (missing.ok, missing.detail) == (False, "not set")
    assert missing.fix == "install.sh --slng-key-file FILE, or $SLNG_API_KEY"
    monkeypatch.setenv("SLNG_API_KEY", "sk-not-shown")
    found = next(r for r in check_secrets(config) if r.name == "SLNG key")
    assert found.ok and "sk-not-shown" not in found.line()
