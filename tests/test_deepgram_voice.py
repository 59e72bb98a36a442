"""The Deepgram voice and its socket keeper against the fake Aura server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from herald.config import DeepgramConfig
from herald.voice.base import VoiceError
from herald.voice.deepgram import DeepgramVoice
from tests.fake_deepgram import FakeDeepgram, FakeDeepgramOptions, dominant_hz, synthesize, tone_hz
from tests.support import free_port

RATE = 48000
KEY = "test-key"


def config(server: FakeDeepgram, **overrides: Any) -> DeepgramConfig:
    return DeepgramConfig(url=server.url, **overrides)


@contextlib.asynccontextmanager
async def warm_voice(
    server: FakeDeepgram, key: str = KEY, window_s: float = 60.0, **overrides: Any
) -> AsyncIterator[DeepgramVoice]:
    voice = DeepgramVoice(config(server, **overrides), key, RATE, budget_window_s=window_s)
    keeping = asyncio.create_task(voice.run())
    try:
        yield voice
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping


async def speak(voice: DeepgramVoice, text: str) -> bytes:
    chunks = [chunk async for chunk in voice.stream(text)]
    return b"".join(chunk.astype("<i2").tobytes() for chunk in chunks)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll (bounded) for a condition on Herald's side, which the fake cannot signal."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (the keeper has no event for a test to await)
            await asyncio.sleep(0.01)


async def logged(
    caplog: pytest.LogCaptureFixture,
    pattern: re.Pattern[str],
    timeout: float = 5.0,  # noqa: ASYNC109
) -> re.Match[str]:
    """The first captured log line that matches, waiting (bounded) for one."""
    async with asyncio.timeout(timeout):
        while True:
            for record in caplog.records:
                if found := pattern.search(record.getMessage()):
                    return found
            await asyncio.sleep(0.01)


def test_the_socket_opens_at_start_and_serves_ten_announcements() -> None:
    async def scenario() -> None:
        async with (
            FakeDeepgram(FakeDeepgramOptions(first_byte_s=0.02)) as server,
            warm_voice(server) as voice,
        ):
            await server.wait_for_connections(1)  # before any announcement
            for n in range(10):
                text = f"Announcement number {n}."
                assert await speak(voice, text) == synthesize(text, RATE)
            assert server.connections == 1
            query = server.received[0]  # the first thing sent was text, on socket 0
            assert query["connection"] == 0

    run(scenario())


def test_speak_sends_the_model_rate_and_token_the_config_names() -> None:
    async def scenario() -> None:
        async with FakeDeepgram(FakeDeepgramOptions(first_byte_s=0)) as server:
            voice = DeepgramVoice(config(server, model="aura-2-andromeda-en"), KEY, 16000)
            keeping = asyncio.create_task(voice.run())
            audio = await speak(voice, "Sixteen kilohertz.")
            keeping.cancel()
            assert audio == synthesize("Sixteen kilohertz.", 16000)

    run(scenario())


def test_a_device_rate_deepgram_lacks_is_resampled() -> None:
    async def scenario() -> None:
        async with (
            FakeDeepgram(FakeDeepgramOptions(first_byte_s=0)) as server,
            warm_voice(server) as _,
        ):
            voice = DeepgramVoice(config(server), KEY, 44100)
            keeping = asyncio.create_task(voice.run())
            audio = np.frombuffer(await speak(voice, "Odd rate."), dtype="<i2")
            keeping.cancel()
        assert abs(len(audio) / 44100 - len(synthesize("Odd rate.", 48000)) / 2 / 48000) < 0.01
        assert abs(dominant_hz(audio, 44100) - tone_hz("Odd rate.")) < 3

    run(scenario())


def test_rotation_replaces_the_socket_before_its_age_with_no_handshake_wait() -> None:
    # About 25 announcements in 9 s: more Flushes than the default 20 a minute allow.
    options = FakeDeepgramOptions(
        first_byte_s=0.05, lifetime_s=3.0, round_trip_s=0.1, flushes_per_minute=100
    )

    async def scenario() -> tuple[list[float], FakeDeepgram]:
        async with (
            FakeDeepgram(options) as server,
            warm_voice(server, max_age_s=2.0, flushes_per_minute=100) as voice,
        ):
            await server.wait_for_connections(1)
            waits = []
            deadline = time.monotonic() + 9
            n = 0
            while time.monotonic() < deadline:
                started = time.monotonic()
                async for _ in voice.stream(f"Tick {n}."):
                    waits.append(time.monotonic() - started)
                    break
                n += 1
                await asyncio.sleep(0.3)
            return waits, server

    waits, server = run(scenario())
    assert server.connections >= 4  # rotated about every 2 s over 9 s
    assert not [entry for entry in server.close_log if "NET-0003" in entry[1]]
    # A handshake costs 3 x 0.1 s here; no announcement waited for one.
    assert max(waits) < 0.05 + 0.25, waits


@pytest.mark.parametrize("how", ["kill", "close 1011"])
def test_a_socket_that_dies_mid_announcement_is_replayed_in_full(how: str) -> None:
    text = "This announcement is long enough to be cut in the middle by the server."

    async def scenario() -> tuple[bytes, int]:
        async with (
            FakeDeepgram(FakeDeepgramOptions(first_byte_s=0.02, pace=1.0)) as server,
            warm_voice(server) as voice,
        ):
            await server.wait_for_connections(1)
            received = []
            async for chunk in voice.stream(text):
                received.append(chunk.astype("<i2").tobytes())
                if len(received) == 5:
                    if how == "kill":
                        await server.kill_all()
                    else:
                        await server.close_all(1011, "NET-0000")
            return b"".join(received), server.connections

    heard, connections = run(scenario())
    assert connections == 2
    assert heard.endswith(synthesize(text, RATE))  # from the start again, to the very end


def test_a_burst_of_long_announcements_stays_within_the_servers_limits() -> None:
    window = 3.0
    options = FakeDeepgramOptions(
        first_byte_s=0, chars_per_minute=300, flushes_per_minute=4, window_s=window
    )
    texts = [f"Long announcement {n}. " + "Words to say. " * 8 for n in range(6)]

    async def scenario() -> FakeDeepgram:
        async with FakeDeepgram(options) as server:
            async with warm_voice(
                server, window_s=window, chars_per_minute=300, flushes_per_minute=4
            ) as voice:
                for text in texts:
                    assert await speak(voice, text) == synthesize(" ".join(text.split()), RATE)
            return server

    server = run(scenario())
    assert server.connections == 1
    assert server.close_log == [] or all(code == 1000 for code, _ in server.close_log)
    assert server.max_chars_in_window_seen <= 300
    warnings = [m for _, m in server.sent if "EXCESSIVE_FLUSH" in m]
    assert warnings == []


def test_a_wrong_key_fails_fast_with_one_clear_line_and_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[str, FakeDeepgram, float]:
        async with (
            FakeDeepgram(FakeDeepgramOptions()) as server,
            warm_voice(server, key="wrong-key") as voice,
        ):
            await server.wait_until(lambda: server.refused >= 1)
            await asyncio.sleep(0.5)
            started = time.monotonic()
            with pytest.raises(VoiceError) as caught:
                await speak(voice, "Hello")
            return str(caught.value), server, time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="herald"):
        message, server, took = run(scenario())
    assert "HTTP 401 INVALID_AUTH: the API key was refused" in message
    assert took < 0.1  # the next voice speaks at once, no waiting on a dead key
    assert server.refused == 1  # one try, then minutes of quiet
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "retrying in 300 s" in errors[0]
    assert "wrong-key" not in caplog.text  # the key never reaches a log line


@pytest.mark.parametrize(
    ("down", "reason"),
    [("refusing", "HTTP 503 SERVICE_UNAVAILABLE"), ("not listening", "ConnectionRefusedError")],
)
def test_an_announcement_hears_at_once_that_the_server_is_down(down: str, reason: str) -> None:
    # connect_wait_s is 5 s, but once an attempt to connect has failed nobody waits for the rest.
    async def scenario() -> tuple[str, float, int]:
        async with FakeDeepgram(FakeDeepgramOptions(handshake_status=503)) as server:
            url = server.url if down == "refusing" else f"ws://127.0.0.1:{free_port()}/v1/speak"
            voice = DeepgramVoice(DeepgramConfig(url=url, connect_wait_s=5), KEY, RATE)
            keeping = asyncio.create_task(voice.run())
            try:
                started = time.monotonic()
                with pytest.raises(VoiceError) as caught:
                    await speak(voice, "Is anyone there?")
                return str(caught.value), time.monotonic() - started, server.refused
            finally:
                keeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeping

    message, took, refused = run(scenario())
    assert "deepgram is unavailable" in message
    assert reason in message
    assert took < 2.5, took  # the first failed attempt ends the wait, not the 5 s
    assert refused == (1 if down == "refusing" else 0)


def test_a_voice_that_never_waits_speaks_on_the_socket_already_open() -> None:
    async def scenario() -> tuple[bytes, int, FakeDeepgram]:
        async with (
            FakeDeepgram(FakeDeepgramOptions(first_byte_s=0)) as server,
            warm_voice(server, connect_wait_s=0) as voice,
        ):
            keeper = voice.keeper
            assert keeper is not None
            await until(lambda: keeper.opened >= 1)
            async with keeper.lease(0) as live:  # no wait at all, and nothing to wait for
                number = live.number
            return await speak(voice, "No waiting."), number, server

    audio, number, server = run(scenario())
    assert audio == synthesize("No waiting.", RATE)
    assert number == 1
    assert server.connections == 1


CLOSED_AND_WAITING = re.compile(r"socket #1 closed: .*; reconnecting in ([0-9.]+) s")


@pytest.mark.parametrize("spoke", [True, False], ids=["after-speech", "silent"])
def test_the_backoff_starts_over_after_a_socket_the_server_spoke_on(
    spoke: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Three refused handshakes take the backoff through 0.25, 0.5 and 1 s; its next step is
    # 1-2 s. A socket that carried audio was a success: after it drops, the first step again.
    async def scenario() -> tuple[float, float | None]:
        options = FakeDeepgramOptions(first_byte_s=0, handshake_status=503)
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            keeper = voice.keeper
            assert keeper is not None
            await server.wait_until(lambda: server.refused >= 3)
            server.set_handshake_status(None)
            await until(lambda: keeper.opened >= 1, timeout=3)
            if spoke:
                assert await speak(voice, "Back again.") == synthesize("Back again.", RATE)
            dropped = time.monotonic()
            await server.kill_all()
            delay = float((await logged(caplog, CLOSED_AND_WAITING)).group(1))
            if not spoke:
                return delay, None
            await server.wait_for_connections(2)
            return delay, time.monotonic() - dropped

    with caplog.at_level(logging.INFO, logger="herald"):
        delay, reconnected_after = run(scenario())
    if spoke:
        assert delay <= 0.25, caplog.text  # the first step (0.125-0.25 s), not 1-2 s
        assert reconnected_after is not None
        assert reconnected_after < 1.0, reconnected_after
    else:
        assert delay >= 1.0, caplog.text  # one more failure in a row: the backoff kept growing


def test_without_a_key_the_voice_says_where_to_put_one() -> None:
    voice = DeepgramVoice(DeepgramConfig(), None, RATE)
    with pytest.raises(VoiceError, match=r"api_key_file, \$DEEPGRAM_API_KEY"):
        run(speak(voice, "Hello"))


def test_stopping_mid_stream_clears_and_no_stale_audio_reaches_the_next_announcement() -> None:
    options = FakeDeepgramOptions(first_byte_s=0.01, pace=1.0, clear_latency_s=0.1)

    async def scenario() -> tuple[bytes, FakeDeepgram]:
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            stream = voice.stream("A long first announcement that will be interrupted.")
            for _ in range(3):
                await anext(stream)
            await stream.aclose()  # what a preemption or a stop does
            after = await speak(voice, "Second.")
            return after, server

    after, server = run(scenario())
    assert after == synthesize("Second.", RATE)  # not one stale sample before it
    sent = [m["message"]["type"] for m in server.received if m["message"]]
    assert sent == ["Speak", "Flush", "Clear", "Speak", "Flush", "Close"]
    assert server.connections == 1  # Cleared came back: the socket stayed in use


def test_reset_for_old_servers_retires_the_socket() -> None:
    options = FakeDeepgramOptions(first_byte_s=0.01, pace=1.0, accept_reset=True)

    async def scenario() -> tuple[bytes, FakeDeepgram]:
        async with (
            FakeDeepgram(options) as server,
            warm_voice(server, clear_message="Reset") as voice,
        ):
            stream = voice.stream("An announcement on a server of the older spec.")
            await anext(stream)
            await stream.aclose()
            after = await speak(voice, "Fresh socket.")
            return after, server

    after, server = run(scenario())
    assert after == synthesize("Fresh socket.", RATE)
    assert server.connections == 2


def test_an_idle_close_is_followed_by_a_fresh_socket_before_the_next_announcement() -> None:
    options = FakeDeepgramOptions(first_byte_s=0.01, idle_timeout_s=0.5)

    async def scenario() -> tuple[bytes, FakeDeepgram]:
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            await server.wait_until(lambda: server.connections >= 2, timeout=5)
            audio = await speak(voice, "After an idle close.")
            return audio, server

    audio, server = run(scenario())
    assert audio == synthesize("After an idle close.", RATE)
    assert (1011, "NET-0001") in server.close_log
