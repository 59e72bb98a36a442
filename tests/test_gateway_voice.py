"""The self-hosted gateway voice: its pure protocol, and the voice against the fake gateway."""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import pytest

from herald.announcement import Announcement
from herald.config import EspeakConfig, GatewayConfig
from herald.events import Event
from herald.speaker import Delivery, Speaker
from herald.voice import gateway, voices_running
from herald.voice.base import Voice, VoiceError
from herald.voice.espeak import EspeakVoice
from herald.voice.gateway import GatewayVoice
from herald.voice.protocol import FailureKind
from tests.fake_deepgram import dominant_hz, synthesize, tone_hz
from tests.fake_gateway import FakeGateway, FakeGatewayOptions
from tests.fake_slng import RecordingSink
from tests.support import run, speak, speak_interrupted, warm

RATE = 24000  # the gateway's default TTS_SAMPLE_RATE


def warm_voice(
    server: FakeGateway, rate: int = RATE, **overrides: Any
) -> AbstractAsyncContextManager[GatewayVoice]:
    return warm(GatewayVoice(GatewayConfig(url=server.url, **overrides), rate))


def fast(**overrides: Any) -> FakeGatewayOptions:
    return FakeGatewayOptions(**{"first_byte_s": 0.01, **overrides})


# --- the protocol, pure ---------------------------------------------------------------------------


def test_messages_and_decoding() -> None:
    assert json.loads(gateway.synthesize("Hé")) == {"action": "synthesize", "text": "Hé"}
    assert json.loads(gateway.CANCEL) == {"action": "cancel"}
    assert gateway.decode(b"\x00\x01") == gateway.Audio(b"\x00\x01")
    assert gateway.decode('{"action": "done"}') == gateway.Done()
    assert isinstance(gateway.decode('{"action": "other"}'), gateway.Other)
    assert isinstance(gateway.decode("[1, 2]"), gateway.Other)


def test_every_close_is_transient_and_a_wrong_path_is_a_config_error() -> None:
    for code in (1000, 1011, None):
        assert gateway.classify_close(code, "").kind is FailureKind.TRANSIENT
    assert gateway.classify_handshake(404, None).kind is FailureKind.CONFIG
    assert gateway.classify_handshake(502, None).kind is FailureKind.TRANSIENT


# --- against the fake -----------------------------------------------------------------------------


def test_one_warm_socket_speaks_each_announcement_until_done() -> None:
    async def scenario() -> FakeGateway:
        async with FakeGateway(fast()) as server, warm_voice(server) as voice:
            await server.wait_for_connections(1)  # before any announcement
            for n in range(3):
                text = f"Gateway announcement {n}."
                assert await speak(voice, text) == synthesize(text, RATE)
            return server

    server = run(scenario())
    assert server.connections == 1
    assert server.received == [
        (0, {"action": "synthesize", "text": f"Gateway announcement {n}."}) for n in range(3)
    ]


def test_audio_at_the_configured_rate_is_resampled_to_the_output_rate() -> None:
    async def scenario() -> np.ndarray:
        async with (
            FakeGateway(fast(sample_rate=16000)) as server,
            warm_voice(server, rate=48000, sample_rate=16000) as voice,
        ):
            return np.frombuffer(await speak(voice, "Sixteen to forty-eight."), dtype="<i2")

    audio = run(scenario())
    expected_s = len(synthesize("Sixteen to forty-eight.", 16000)) / 2 / 16000
    assert abs(len(audio) / 48000 - expected_s) < 0.01
    assert abs(dominant_hz(audio, 48000) - tone_hz("Sixteen to forty-eight.")) < 3


@pytest.mark.parametrize("done_after_cancel", [False, True])
def test_stopping_mid_stream_cancels_and_no_stale_audio_follows(done_after_cancel: bool) -> None:
    options = fast(pace=1.0, done_after_cancel=done_after_cancel)

    async def scenario() -> tuple[bytes, FakeGateway]:
        async with FakeGateway(options) as server, warm_voice(server) as voice:
            stream = voice.stream("A long gateway announcement that is interrupted.")
            for _ in range(3):
                await anext(stream)
            await stream.aclose()  # what a preemption or a stop does
            return await speak(voice, "Second."), server

    after, server = run(scenario())
    assert after == synthesize("Second.", RATE)  # exactly its own audio, nothing stale
    assert server.types_received("action") == ["synthesize", "cancel", "synthesize"]
    assert server.connections == 1  # the socket is kept: reconnecting disturbs the gateway


def test_a_socket_killed_mid_announcement_is_replayed_in_full() -> None:
    text = "A gateway announcement long enough to be cut by the network."

    async def scenario() -> tuple[bytes, int]:
        async with FakeGateway(fast(pace=1.0)) as server, warm_voice(server) as voice:
            return await speak_interrupted(voice, text, 4, server.kill_all), server.connections

    heard, connections = run(scenario())
    assert connections == 2
    assert heard.endswith(synthesize(text, RATE))


def test_a_provider_failure_closes_the_socket_the_next_voice_speaks_and_it_reconnects() -> None:
    async def scenario() -> tuple[list[Event], FakeGateway]:
        async with FakeGateway(fast()) as server:
            voices: list[Voice] = [
                GatewayVoice(GatewayConfig(url=server.url), RATE),
                EspeakVoice(EspeakConfig(), RATE),
            ]
            events: list[Event] = []
            speaker = Speaker(voices, RecordingSink(), events.append, Delivery(RATE))
            async with voices_running(voices):
                await server.wait_for_connections(1)
                server.options.provider_fails = True
                assert await speaker.speak(Announcement("a1", "The provider is down."))
                server.options.provider_fails = False
                await server.wait_until(lambda: server.open_connections == 1)
                assert await speaker.speak(Announcement("a2", "The provider is back."))
            return events, server

    events, server = run(scenario())
    started = [
        (e.announcement_id, e.details["voice"], e.details["degraded"])
        for e in events
        if e.kind == "started"
    ]
    assert started == [("a1", "espeak", True), ("a2", "gateway", False)]
    assert server.close_log[:2] == [(1000, ""), (1000, "")]  # the first try and its replay
    assert server.connections >= 3
    assert server.syntheses == 1


def test_a_wrong_path_is_reported_as_a_config_error() -> None:
    async def scenario() -> str:
        async with FakeGateway(fast()) as server:
            voice = GatewayVoice(GatewayConfig(url=server.url + "/nope", connect_wait_s=1), RATE)
            async with warm(voice):
                await server.wait_until(lambda: server.refused >= 1)
                await asyncio.sleep(0.1)
                with pytest.raises(VoiceError) as caught:
                    await speak(voice, "Hello")
            return str(caught.value)

    assert "HTTP 404" in run(scenario())
