"""The SLNG voice: its pure protocol, and the voice against the fake SLNG gateway on loopback.

The fake speaks every variant SLNG's routes do (docs/protocols.md, "SLNG"), and the tests that
matter run over each: both route families, either greeting, either case, both audio forms, both
error shapes. A fake that only spoke the form Herald expects would prove nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AbstractAsyncContextManager
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
from herald.voice.protocol import Failure, FailureKind
from herald.voice.slng import SlngVoice
from tests.fake_deepgram import dominant_hz, synthesize, tone_hz
from tests.fake_slng import FakeSlng, FakeSlngOptions, RecordingSink, Route
from tests.support import run, speak, speak_interrupted, warm

RATE = 24000  # the fake's rate and the output's: no resampling, so audio compares byte for byte
KEY = "slng-test-key"

# (route dialled, options): each route family as SLNG documents it, and each crossed with the
# other's greeting and case, since Herald must not depend on which route says what.
DIALECTS = [
    pytest.param("bridge", {}, id="bridge:ready,lower"),
    pytest.param("per-model", {}, id="per-model:Metadata,Capitalised"),
    pytest.param("bridge", {"greeting": "Metadata", "capitalised": True}, id="bridge:Metadata"),
    pytest.param("per-model", {"greeting": "ready", "capitalised": False}, id="per-model:ready"),
]
ERROR_SHAPES = [
    pytest.param({}, id="error"),
    pytest.param({"nested_errors": True}, id="error-nested"),
    pytest.param({"capitalised": True}, id="Error"),
    pytest.param({"capitalised": True, "nested_errors": True}, id="Error-nested"),
]


def config(server: FakeSlng, route: Route = "bridge", **overrides: Any) -> SlngConfig:
    return SlngConfig(url=server.template_for(route), **overrides)


def warm_voice(
    server: FakeSlng, key: str = KEY, rate: int = RATE, route: Route = "bridge", **overrides: Any
) -> AbstractAsyncContextManager[SlngVoice]:
    return warm(SlngVoice(config(server, route, **overrides), key, rate))


def fast(**overrides: Any) -> FakeSlngOptions:
    return FakeSlngOptions(**{"first_byte_s": 0.01, **overrides})


def greeted(server: FakeSlng) -> bool:
    return any(kind.lower() in ("ready", "metadata") for kind in server.types_sent())


# --- the protocol, pure ---------------------------------------------------------------------------


def test_the_default_url_is_the_native_bridge_and_the_route_and_host_are_settings() -> None:
    cfg = SlngConfig(provider="slng/rime", model="arcana", variant="3-en", voice="luna")
    assert cfg.socket_url == "wss://api.slng.ai/v1/bridges/unmute/tts/slng/rime/arcana:3-en"
    per_model = SlngConfig(route="per-model", provider="slng/deepgram", variant="2-en")
    assert per_model.socket_url == "wss://api.slng.ai/v1/tts/slng/deepgram/aura:2-en"
    regional = SlngConfig(host="eu-west.api.slng.ai")
    assert regional.socket_url == "wss://eu-west.api.slng.ai/v1/bridges/unmute/tts/deepgram/aura:2"
    whole = SlngConfig(
        url="wss://{host}/v1/tts/{provider}/{model}:{variant}", host="gb.api.slng.ai"
    )
    assert whole.socket_url == "wss://gb.api.slng.ai/v1/tts/deepgram/aura:2"
    assert SlngConfig(url="").socket_url == SlngConfig().socket_url  # an empty url is unset


def test_init_names_model_variant_voice_and_audio_format() -> None:
    cfg = SlngConfig(provider="slng/rime", model="arcana", variant="3-en", voice="luna")
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


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (
            {"url": "wss://x/{provder}/{model}"},
            "voice.slng.url: unknown placeholder {provder}: use {host}, {provider}, {model}, "
            "{variant}",
        ),
        ({"route": "v2"}, "voice.slng.route: "),
        ({"host": "https://api.slng.ai"}, "voice.slng.host: "),
    ],
    ids=["placeholder", "route", "host"],
)
def test_a_wrong_url_route_or_host_is_a_config_error_naming_the_key(
    settings: dict[str, str], line: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"voice": {"slng": settings}}, "t.toml")
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith(f"config error: t.toml: {line}")


@pytest.mark.parametrize(
    "spell", [str.lower, str.capitalize, str.upper], ids=["lower", "Cap", "UP"]
)
def test_decode_reads_every_server_message_in_any_case(spell: Any) -> None:
    def frame(kind: str, **fields: Any) -> str:
        return json.dumps({"type": spell(kind), **fields})

    assert slng.decode(b"\x01\x02") == slng.Audio(b"\x01\x02")
    assert slng.decode(frame("audio_chunk", data="AQI=", sequence=3)) == slng.Audio(b"\x01\x02")
    assert slng.decode(frame("ready", session_id="s1")) == slng.Ready("s1")
    assert slng.decode(frame("metadata", request_id="r1")) == slng.Metadata("r1")
    assert slng.decode(frame("flushed", sequence_id=0)) == slng.End("flushed")
    assert slng.decode(frame("audio_end", duration=3.5)) == slng.End("audio_end")
    assert slng.decode(frame("cleared", sequence_id=0)) == slng.Cleared()
    assert isinstance(slng.decode(frame("segment_start", segment_id="a")), slng.Other)
    assert slng.decode(frame("warning", warn_msg="slow")).kind == "warning"  # type: ignore[union-attr]
    assert isinstance(slng.decode("not json"), slng.Other)
    assert isinstance(slng.decode("[1, 2]"), slng.Other)
    assert isinstance(slng.decode(frame("audio_chunk", data="%%%")), slng.Error)


@pytest.mark.parametrize("kind", ["error", "Error", "ERROR"])
@pytest.mark.parametrize(
    "fields",
    [
        {"code": "provider_error", "message": "Upstream unavailable"},
        {"data": {"code": "provider_error", "message": "Upstream unavailable"}},
        {"code": "provider_error", "data": {"message": "Upstream unavailable"}},
        {"err_code": "provider_error", "err_msg": "Upstream unavailable"},  # Deepgram's form
    ],
    ids=["top-level", "nested", "mixed", "deepgram-style"],
)
def test_decode_reads_errors_of_either_type_and_shape(kind: str, fields: dict[str, Any]) -> None:
    event = slng.decode(json.dumps({"type": kind, **fields}))
    assert event == slng.Error("provider_error", "Upstream unavailable")
    assert str(event) == "provider_error: Upstream unavailable"


@pytest.mark.parametrize(
    ("code", "kind", "replayed"),
    [
        ("auth_error", FailureKind.AUTH, False),
        ("config_error", FailureKind.CONFIG, False),
        ("invalid_request", FailureKind.CONFIG, False),
        ("rate_limit", FailureKind.RATE_LIMITED, False),
        ("provider_error", FailureKind.TRANSIENT, True),
        ("backend_connection_failed", FailureKind.TRANSIENT, True),
        ("backpressure", FailureKind.TRANSIENT, True),
        ("not_ready", FailureKind.TRANSIENT, True),
        ("idle_timeout_exceeded", FailureKind.TRANSIENT, True),
        ("max_connection_duration_exceeded", FailureKind.LIFETIME, True),
        ("something_new", FailureKind.TRANSIENT, True),
        ("Auth_Error", FailureKind.AUTH, False),
    ],
)
def test_every_error_code_has_a_kind_and_a_verdict_on_replaying(
    code: str, kind: FailureKind, replayed: bool
) -> None:
    failure = slng.classify_error(code, "detail")
    assert failure.kind is kind
    assert failure.detail.startswith(f"{code}: detail")
    assert slng.spent(slng.Error(code, "detail")).replay is replayed


def test_error_hints_say_what_to_change() -> None:
    assert "check the SLNG key" in str(slng.classify_error("auth_error", "bad key"))
    assert "check [voice.slng]" in str(slng.classify_error("config_error", "unknown voice"))
    assert "max_age_s" in str(slng.classify_error("max_connection_duration_exceeded", ""))
    assert str(slng.classify_error("", "")) == "transient: an error without a code"


def test_handshake_statuses_and_close_codes_are_classified() -> None:
    assert slng.classify_handshake(401, None).kind is FailureKind.AUTH
    assert slng.classify_handshake(404, None).kind is FailureKind.CONFIG
    assert "route" in slng.classify_handshake(404, None).detail
    assert slng.classify_handshake(429, None).kind is FailureKind.RATE_LIMITED
    assert slng.classify_handshake(503, None).kind is FailureKind.TRANSIENT
    assert slng.classify_close(1000, "").kind is FailureKind.TRANSIENT
    assert slng.classify_close(4001, "unauthorized").kind is FailureKind.AUTH
    assert slng.classify_close(None, "").kind is FailureKind.TRANSIENT


def test_on_the_global_host_a_refusal_or_silence_points_to_a_regional_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pipecat-slng 0.7 says the global host is no longer supported; SLNG's reference still
    uses it. Whichever is right, a user on the global host is told what to change."""
    global_host = SlngVoice(SlngConfig(), KEY, RATE)
    regional = SlngVoice(SlngConfig(host="eu-west.api.slng.ai"), KEY, RATE)
    assert slng.REGIONAL_HINT in str(global_host._classify_handshake(404, None))
    assert slng.REGIONAL_HINT in str(global_host._classify_handshake(410, None))
    assert slng.REGIONAL_HINT not in str(global_host._classify_handshake(401, None))
    assert slng.REGIONAL_HINT not in str(regional._classify_handshake(404, None))

    async def unreachable(keeper: Any, *_: Any) -> str:
        keeper.last_failure = Failure(FailureKind.TRANSIENT, "OSError: no such host")
        raise VoiceError("slng is unavailable: transient: OSError: no such host")

    monkeypatch.setattr(slng, "cold_check", unreachable)
    with pytest.raises(VoiceError) as caught:
        run(global_host.check())
    assert str(caught.value) == (
        "slng is unavailable: transient: OSError: no such host; " + slng.REGIONAL_HINT
    )
    with pytest.raises(VoiceError) as caught:
        run(regional.check())
    assert slng.REGIONAL_HINT not in str(caught.value)


# --- against the fake: every dialect --------------------------------------------------------------


@pytest.mark.parametrize(("route", "dialect"), DIALECTS)
def test_either_greeting_opens_the_session_and_one_warm_socket_speaks_each_announcement(
    route: Route, dialect: dict[str, Any]
) -> None:
    async def scenario() -> tuple[FakeSlng, SlngVoice]:
        async with FakeSlng(fast(**dialect)) as server, warm_voice(server, route=route) as voice:
            await server.wait_until(lambda: greeted(server))
            for n in range(3):
                text = f"Announcement number {n}."
                assert await speak(voice, text) == synthesize(text, RATE)
            return server, voice

    server, voice = run(scenario())
    assert server.connections == 1
    prefix = "/v1/bridges/unmute/tts/" if route == "bridge" else "/v1/tts/"
    assert server.paths == [f"{prefix}deepgram/aura:2"]
    assert server.inits == [
        {
            "type": "init",
            "model": "aura:2",
            "voice": "aura-2-thalia-en",
            "config": {"encoding": "linear16", "sample_rate": 24000},
        }
    ]
    assert server.types_received() == ["init"] + ["text", "flush"] * 3 + ["close"]
    greeting = dialect.get("greeting") or ("ready" if route == "bridge" else "Metadata")
    assert voice.greeting.startswith(greeting)


@pytest.mark.parametrize(("route", "dialect"), DIALECTS[:2])
@pytest.mark.parametrize("binary_audio", [True, False], ids=["binary", "audio_chunk"])
@pytest.mark.parametrize("audio_end", [False, True], ids=["flushed", "flushed+audio_end"])
def test_binary_and_base64_audio_sound_the_same_and_end_markers_end_only_their_own(
    route: Route, dialect: dict[str, Any], binary_audio: bool, audio_end: bool
) -> None:
    options = fast(binary_audio=binary_audio, audio_end=audio_end, **dialect)

    async def scenario() -> None:
        async with FakeSlng(options) as server, warm_voice(server, route=route) as voice:
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


@pytest.mark.parametrize(("route", "dialect"), DIALECTS)
def test_stopping_mid_stream_clears_without_cancel_and_no_stale_audio_follows(
    route: Route, dialect: dict[str, Any]
) -> None:
    async def scenario() -> tuple[list[bytes], FakeSlng]:
        options = fast(pace=1.0, **dialect)
        async with FakeSlng(options) as server, warm_voice(server, route=route) as voice:
            heard = []
            for n in range(2):
                await interrupt_after(voice, f"A long announcement {n}, interrupted.", 3)
                heard.append(await speak(voice, f"After {n}."))
            return heard, server

    heard, server = run(scenario())
    assert heard == [synthesize("After 0.", RATE), synthesize("After 1.", RATE)]  # nothing stale
    assert server.types_received() == ["init"] + ["text", "flush", "clear", "text", "flush"] * 2 + [
        "close"
    ]
    assert server.connections == 1  # `Cleared` in either case keeps the socket
    assert "error" not in [kind.lower() for kind in server.types_sent()]


@pytest.mark.parametrize(("route", "dialect"), DIALECTS[:2])
@pytest.mark.parametrize("audio_end", [False, True], ids=["flushed", "flushed+audio_end"])
def test_a_normal_close_after_each_utterance_is_replaced_at_once(
    route: Route, dialect: dict[str, Any], audio_end: bool
) -> None:
    options = fast(close_after_utterance=True, audio_end=audio_end, **dialect)

    async def scenario() -> tuple[FakeSlng, float]:
        async with FakeSlng(options) as server, warm_voice(server, route=route) as voice:
            started = time.monotonic()
            for n in range(5):
                text = f"Upstream closes after {n}."
                assert await speak(voice, text) == synthesize(text, RATE)
            return server, time.monotonic() - started

    server, took = run(scenario())
    assert server.connections >= 5
    assert server.close_log.count((1000, "")) >= 4
    assert server.syntheses == 5  # each heard once: none replayed
    assert took < 2.0  # no backoff: a normal close is not a failure


@pytest.mark.parametrize(("route", "dialect"), DIALECTS)
def test_check_says_how_the_route_answered_init(route: Route, dialect: dict[str, Any]) -> None:
    async def scenario() -> str:
        async with FakeSlng(fast(**dialect)) as server:
            voice = SlngVoice(config(server, route), KEY, RATE)
            try:
                return await voice.check()
            finally:
                await voice.aclose()

    said = run(scenario())
    if dialect.get("greeting", "ready" if route == "bridge" else "Metadata") == "ready":
        assert said.startswith("SLNG answered init with ready (session ")
    else:
        assert said.startswith("SLNG answered init with Metadata (the per-model route); ")
    assert "model 'aura:2' voice 'aura-2-thalia-en', first audio after " in said


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_an_init_error_is_a_config_failure_that_waits_for_a_person(
    shape: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[str, FakeSlng, SlngVoice]:
        options = fast(**shape)
        async with FakeSlng(options) as server, warm_voice(server, voice="no-such-voice") as voice:
            await server.wait_until(lambda: server.inits != [])
            await asyncio.sleep(0.3)
            with pytest.raises(VoiceError) as caught:
                await speak(voice, "Hello")
            return str(caught.value), server, voice

    with caplog.at_level(logging.INFO, logger="herald"):
        message, server, voice = run(scenario())
    assert (
        "config error: config_error: unknown voice: no-such-voice (check [voice.slng])" in message
    )
    assert voice.keeper is not None and voice.keeper.last_failure is not None
    assert voice.keeper.last_failure.kind is FailureKind.CONFIG
    assert server.connections == 1  # retried every 5 minutes, not in a loop
    assert "retrying in 300 s" in caplog.text


@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize(
    ("code", "errors_sent"),
    [("provider_error", 2), ("auth_error", 1)],
    ids=["transient-replayed-once", "auth-not-replayed"],
)
def test_a_server_error_hands_the_announcement_to_the_next_voice(
    shape: dict[str, Any], code: str, errors_sent: int
) -> None:
    options = fast(flush_error=(code, "Upstream service unavailable"), **shape)

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
    errors = [m for _, m in server.sent if str(m["type"]).lower() == "error"]
    assert [m.get("code") or m["data"]["code"] for m in errors] == [code] * errors_sent


@pytest.mark.parametrize(
    ("code", "replayed"),
    [
        ("provider_error", True),
        ("backend_connection_failed", True),
        ("backpressure", True),
        ("not_ready", True),
        ("idle_timeout_exceeded", True),
        ("max_connection_duration_exceeded", True),
        ("auth_error", False),
        ("config_error", False),
        ("invalid_request", False),
    ],
)
@pytest.mark.parametrize("shape", ERROR_SHAPES[::3])  # top-level `error`, nested `Error`
def test_an_error_mid_announcement_spends_the_session_and_a_fresh_socket_speaks_it_to_the_end(
    code: str, replayed: bool, shape: dict[str, Any]
) -> None:
    text = "An announcement long enough to be cut in the middle by an error."
    options = fast(mid_error=(code, "detail"), **shape)

    async def scenario() -> tuple[bytes, str, FakeSlng]:
        async with FakeSlng(options) as server, warm_voice(server) as voice:
            received: list[bytes] = []
            try:
                async for chunk in voice.stream(text):
                    received.append(chunk.astype("<i2").tobytes())
            except VoiceError as exc:
                return b"".join(received), str(exc), server
            return b"".join(received), "", server

    heard, failure, server = run(scenario())
    if replayed:
        assert failure == ""
        assert heard.endswith(synthesize(text, RATE))  # from its start again, to the very end
        assert server.syntheses == 2
    else:
        assert failure == f"slng: {slng.classify_error(code, 'detail')}"  # one line, and why
        assert server.syntheses == 1  # a person must act: the next voice speaks it instead


def test_an_error_while_idle_ends_the_session_and_the_next_announcement_is_not_lost() -> None:
    """The session ends idle with an error and the socket stays open: the error must not be
    taken for the next announcement's, nor the next announcement sent to a spent session."""
    options = fast(idle_timeout_s=0.3, idle_error=True, idle_close=False)

    async def scenario() -> tuple[bytes, FakeSlng]:
        async with FakeSlng(options) as server, warm_voice(server, keepalive_s=0) as voice:
            await server.wait_until(lambda: "error" in server.types_sent())
            await asyncio.sleep(0.1)  # it has reached Herald, which is idle
            return await speak(voice, "After an idle error."), server

    heard, server = run(scenario())
    assert heard == synthesize("After an idle error.", RATE)
    assert server.connections == 2
    assert server.types_received().count("text") == 1  # never sent to the spent session


def test_no_greeting_within_the_bound_gives_the_next_voice_the_turn() -> None:
    async def scenario() -> tuple[str, str]:
        async with (
            FakeSlng(fast(greeting="none")) as server,
            warm_voice(server, ready_timeout_s=0.3, connect_wait_s=1.0) as voice,
        ):
            with pytest.raises(VoiceError) as caught:
                await speak(voice, "Hello")
            return str(caught.value), voice.describe()

    message, described = run(scenario())
    assert "no 'ready' or 'Metadata' within 0.3 s of 'init'" in message + described


def test_a_socket_killed_mid_announcement_is_replayed_in_full() -> None:
    text = "This announcement is long enough to be cut in the middle by the network."

    async def scenario() -> tuple[bytes, int]:
        async with FakeSlng(fast(pace=1.0)) as server, warm_voice(server) as voice:
            return await speak_interrupted(voice, text, 4, server.kill_all), server.connections

    heard, connections = run(scenario())
    assert connections == 2
    assert heard.endswith(synthesize(text, RATE))  # from the start again, to the very end


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


# --- keepalive ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("shape", ERROR_SHAPES[::3])
def test_a_server_that_does_not_know_keepalive_gets_no_more_and_its_session_is_replaced(
    shape: dict[str, Any],
) -> None:
    async def scenario() -> tuple[FakeSlng, SlngVoice, bytes]:
        async with (
            FakeSlng(fast(keepalive_supported=False, **shape)) as server,
            warm_voice(server, keepalive_s=0.1) as voice,
        ):
            await server.wait_until(lambda: server.connections >= 2 and server.open_connections > 0)
            await asyncio.sleep(0.5)  # five more idle periods: none may send a keepalive
            return server, voice, await speak(voice, "No stale error.")

    server, voice, audio = run(scenario())
    assert voice.keepalive_supported is False
    assert server.types_received().count("keepalive") == 1
    assert audio == synthesize("No stale error.", RATE)
    assert server.connections == 2  # the refusal spent the first session: replaced while idle


def test_a_transient_error_answering_keepalive_does_not_turn_keepalive_off() -> None:
    options = fast(keepalive_errors=1, idle_timeout_s=0.6)

    async def scenario() -> tuple[FakeSlng, SlngVoice, bytes]:
        async with FakeSlng(options) as server, warm_voice(server, keepalive_s=0.1) as voice:
            await server.wait_until(
                lambda: (
                    [i for i, m in server.received if m.get("type") == "keepalive"].count(1) >= 6
                )
            )
            return server, voice, await speak(voice, "Keepalive survived.")

    server, voice, audio = run(scenario())
    assert voice.keepalive_supported is True
    assert server.keepalives_refused == 1
    assert server.connections == 2  # the error spent the first session; the second is kept alive
    assert (1011, "idle timeout") not in server.close_log
    assert audio == synthesize("Keepalive survived.", RATE)
