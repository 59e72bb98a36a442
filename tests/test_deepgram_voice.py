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
from tests.support import free_port, run, speak, speak_interrupted, warm

RATE = 48000
KEY = "test-key"


def config(server: FakeDeepgram, **overrides: Any) -> DeepgramConfig:
    return DeepgramConfig(url=server.url, **overrides)


def warm_voice(
    server: FakeDeepgram, key: str = KEY, window_s: float = 60.0, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[DeepgramVoice]:
    return warm(DeepgramVoice(config(server, **overrides), key, RATE, budget_window_s=window_s))


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
            async with warm(voice):
                audio = await speak(voice, "Sixteen kilohertz.")
            assert audio == synthesize("Sixteen kilohertz.", 16000)

    run(scenario())


def test_a_device_rate_deepgram_lacks_is_resampled() -> None:
    async def scenario() -> None:
        async with (
            FakeDeepgram(FakeDeepgramOptions(first_byte_s=0)) as server,
            warm_voice(server) as _,
            warm(DeepgramVoice(config(server), KEY, 44100)) as voice,
        ):
            audio = np.frombuffer(await speak(voice, "Odd rate."), dtype="<i2")
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

            async def interrupt() -> None:
                if how == "kill":
                    await server.kill_all()
                else:
                    await server.close_all(1011, "NET-0000")

            return await speak_interrupted(voice, text, 5, interrupt), server.connections

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
            async with warm(voice):
                started = time.monotonic()
                with pytest.raises(VoiceError) as caught:
                    await speak(voice, "Is anyone there?")
                return str(caught.value), time.monotonic() - started, server.refused

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
            await speak(voice, "Warm.")  # its Flushed shows the server numbers Flushes
            stream = voice.stream("A long first announcement that will be interrupted.")
            for _ in range(3):
                await anext(stream)
            await stream.aclose()  # what a preemption or a stop does
            after = await speak(voice, "Second.")
            return after, server

    after, server = run(scenario())
    assert after == synthesize("Second.", RATE)  # not one stale sample before it
    sent = [m["message"]["type"] for m in server.received if m["message"]]
    assert sent == ["Speak", "Flush", "Speak", "Flush", "Clear", "Speak", "Flush", "Close"]
    assert server.connections == 1  # Cleared came back: the socket stayed in use


LONG = "A long announcement that is cut short after its first few words."
NEXT = "The next announcement, heard whole."


@contextlib.asynccontextmanager
async def cut_then_next(
    options: FakeDeepgramOptions, warm_up: bool = True
) -> AsyncIterator[tuple[FakeDeepgram, DeepgramVoice, list[bytes]]]:
    """Speak a short announcement (unless not `warm_up`), cut a long one after three chunks,
    then speak NEXT; yields the fake, the voice and, once the block ends, what NEXT sounded."""
    heard: list[bytes] = []
    async with FakeDeepgram(options) as server, warm_voice(server) as voice:
        if warm_up:
            assert await speak(voice, "Warm.") == synthesize("Warm.", RATE, 0.02)
        stream = voice.stream(LONG)
        for _ in range(3):
            await anext(stream)
        await stream.aclose()
        heard.append(await speak(voice, NEXT))
        yield server, voice, heard


# How Herald fares with each form of sequence_id, when the cut announcement's Flushed comes
# before Cleared, after it (in the middle of the next one), or never. Ids Herald can use keep
# the socket. Without them the socket is replaced after a cut, unless that Flushed already came
# before Cleared. A server that always says 0 looks right once; then the next announcement
# cannot be told from the cut one's and is replayed whole on a fresh socket.
USABLE = ("count", "string", "float")
SEQUENCE_CASES = [
    (form, mode)
    for form in ("count", "string", "float", "absent", "null", "bool", "one_based", "constant")
    for mode in ("before", "after", "none")
]


@pytest.mark.parametrize(("form", "mode"), SEQUENCE_CASES)
def test_a_cut_announcements_flushed_never_ends_the_next_one(form: str, mode: str) -> None:
    options = FakeDeepgramOptions(
        first_byte_s=0.01,
        pace=1.0,
        seconds_per_char=0.02,
        sequence_ids=form,
        cleared_flushed=mode,
        stale_flushed_delay_s=0.15,  # NEXT lasts 0.7 s: it lands in the middle
    )

    async def scenario() -> tuple[bytes, int, bool | None]:
        async with cut_then_next(options) as (server, voice, heard):
            pass
        return heard[0], server.connections, voice.ids_trusted

    heard, connections, trusted = run(scenario())
    expected = synthesize(NEXT, RATE, 0.02)
    replayed = form == "constant" and mode != "before"
    if replayed:
        assert heard.endswith(expected) and len(heard) > len(expected)
    else:
        assert heard == expected  # whole: not cut short by a stale Flushed, nothing stale in it
    # Without usable ids, a socket whose cut Flush may still be answered is replaced.
    replaced = form not in (*USABLE, "constant") and mode != "before"
    assert connections == (2 if replayed or replaced else 1)
    assert trusted == (form in USABLE)


@pytest.mark.parametrize("mode", ["after", "none"])
def test_a_cut_before_the_numbering_is_known_gets_a_fresh_socket(mode: str) -> None:
    options = FakeDeepgramOptions(
        first_byte_s=0.01, pace=1.0, seconds_per_char=0.02, cleared_flushed=mode
    )

    async def scenario() -> tuple[bytes, int]:
        async with cut_then_next(options, warm_up=False) as (server, _, heard):
            pass
        return heard[0], server.connections

    heard, connections = run(scenario())
    assert heard == synthesize(NEXT, RATE, 0.02)
    assert connections == 2


@pytest.mark.parametrize("spec_fields", [False, True], ids=["warn_code", "code"])
def test_an_ignored_flush_is_spoken_at_once_on_a_fresh_socket(
    spec_fields: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The fake allows one Flush a minute, Herald's budget twenty: the second Flush is ignored
    # with an EXCESSIVE_FLUSH warning (in either field shape) and no Flushed ever comes.
    options = FakeDeepgramOptions(
        first_byte_s=0.01, flushes_per_minute=1, spec_warning_fields=spec_fields
    )

    async def scenario() -> tuple[bytes, float, int]:
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            assert await speak(voice, "First.") == synthesize("First.", RATE)
            started = time.monotonic()
            audio = await speak(voice, "Second.")
            return audio, time.monotonic() - started, server.connections

    with caplog.at_level(logging.INFO, logger="herald"):
        audio, took, connections = run(scenario())
    assert audio == synthesize("Second.", RATE)
    assert took < 1.0, took  # not the 5 s first_audio_timeout_s
    assert connections == 2
    assert "the server ignored the Flush (EXCESSIVE_FLUSH: " in caplog.text


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


IDLE_CLOSES = [
    pytest.param(1011, "code", id="1011-NET-0001"),
    pytest.param(1011, "prose", id="1011-prose-dpgr.am/net0001"),
    pytest.param(1000, "code", id="1000-normal"),
]
IDLE_CLOSED = re.compile(r"socket #(\d+) closed for idleness after ([0-9.]+) s unused")


@pytest.mark.parametrize(("close_code", "style"), IDLE_CLOSES)
def test_an_idle_close_is_no_failure_and_a_new_socket_opens_at_once(
    close_code: int, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Three refused handshakes grow the backoff (next step 1-2 s); the socket that then opens
    # is closed for idleness after 1.2 s, long before 30 s of life. That is no failure: the
    # next socket opens at once, and the idle lifetime is learned.
    options = FakeDeepgramOptions(
        handshake_status=503,
        idle_timeout_s=1.2,
        idle_close_code=close_code,
        reason_style=style,
    )

    async def scenario() -> tuple[float, float | None]:
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            keeper = voice.keeper
            assert keeper is not None
            await server.wait_until(lambda: server.refused >= 3)
            server.set_handshake_status(None)
            await server.wait_for_connections(1, timeout=3)
            await server.wait_until(lambda: server.idle_closes == 1, timeout=3)
            closed = time.monotonic()
            await server.wait_for_connections(2, timeout=3)
            return time.monotonic() - closed, keeper.idle_life_s

    with caplog.at_level(logging.INFO, logger="herald"):
        reopened_after, idle_life = run(scenario())
    assert reopened_after < 0.3, reopened_after  # not 1-2 s of backoff
    if close_code == 1000:
        assert idle_life is None  # one normal close does not teach the lifetime yet
    else:
        assert idle_life is not None and 1.0 < idle_life < 1.4  # Herald's side of the close
    assert IDLE_CLOSED.search(caplog.text), caplog.text
    assert "reconnecting in" not in caplog.text.split("closed for idleness")[1]


@pytest.mark.parametrize(("close_code", "style"), IDLE_CLOSES)
def test_unused_sockets_are_replaced_before_the_server_closes_them(
    close_code: int, style: str
) -> None:
    # Idle sockets live 1.5 s; a handshake costs 0.3 s. After the first idle close Herald
    # replaces an unused socket ahead of time, new one first, and never sends KeepAlive.
    options = FakeDeepgramOptions(
        first_byte_s=0.02,
        round_trip_s=0.1,
        idle_timeout_s=1.5,
        idle_close_code=close_code,
        reason_style=style,
    )

    async def scenario() -> tuple[FakeDeepgram, list[float], int, int]:
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            learned_from = 2 if close_code == 1000 else 1  # a normal close must happen twice
            await server.wait_until(lambda: server.idle_closes == learned_from, timeout=6)
            learned_at = server.connections
            waits = []
            for pause in (0.9, 1.3, 0.4, 1.1):  # announcements at odd moments
                await asyncio.sleep(pause)
                started = time.monotonic()
                async for _ in voice.stream("Now."):
                    waits.append(time.monotonic() - started)
                    break
            await asyncio.sleep(1.6)
            return server, waits, learned_at, learned_from

    server, waits, learned_at, learned_from = run(scenario())
    assert server.idle_closes == learned_from, server.close_log  # only those it learned from
    assert server.connections >= learned_at + 3  # replaced every ~1.1 s meanwhile
    assert max(waits) < 0.02 + 0.2, waits  # no announcement waited for a 0.3 s handshake
    sent = [m["message"].get("type") for m in server.received if m["message"]]
    assert "KeepAlive" not in sent


def test_the_idle_life_is_counted_from_the_clients_last_message_not_the_end_of_the_audio() -> None:
    # The server's idle timer runs from the last message it got: the Flush, as an announcement
    # begins. An announcement that plays for most of that time must not teach a lifetime of
    # what was left after it (that taught 0.5 s here, and a replacement every 0.3 s after).
    options = FakeDeepgramOptions(idle_timeout_s=2.0, pace=1.0, chunk_ms=20)

    async def scenario() -> float | None:
        async with FakeDeepgram(options) as server, warm_voice(server) as voice:
            keeper = voice.keeper
            assert keeper is not None
            text = "It plays for about 1.4 s."  # 0.06 s a character
            async for _ in voice.stream(text):
                pass
            await server.wait_until(lambda: server.idle_closes == 1, timeout=4)
            await asyncio.sleep(0.1)
            return keeper.idle_life_s

    idle_life = run(scenario())
    assert idle_life is not None and 1.7 < idle_life < 2.4, idle_life


def test_sockets_dropped_at_once_are_failures_not_idle_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server that "idle"-closes every socket within a third of a second is broken: Herald
    # backs off instead of reconnecting in a tight loop.
    options = FakeDeepgramOptions(idle_timeout_s=0.3)

    async def scenario() -> FakeDeepgram:
        async with FakeDeepgram(options) as server, warm_voice(server):
            await asyncio.sleep(2.0)
            return server

    with caplog.at_level(logging.INFO, logger="herald"):
        server = run(scenario())
    assert server.connections <= 5, server.connections
    assert "reconnecting in" in caplog.text
    assert "closed for idleness" not in caplog.text


def test_a_lease_waiting_for_a_socket_does_not_hold_up_the_rotation_that_brings_it() -> None:
    # The rotation is dialling (1.2 s) when the socket in use is retired; the next lease must
    # get the new socket as soon as it is open, not wait out connect_wait_s.
    options = FakeDeepgramOptions(round_trip_s=0.4)

    async def scenario() -> tuple[float, int]:
        async with (
            FakeDeepgram(options) as server,
            warm_voice(server, max_age_s=2.0, connect_wait_s=5) as voice,
        ):
            keeper = voice.keeper
            assert keeper is not None
            await until(lambda: keeper.opened >= 1, timeout=5)
            await asyncio.sleep(2.3)  # the rotation began at 2.0 s and dials until 3.2 s
            async with keeper.lease(0) as live:
                keeper.retire(live, "a test retires it")
            started = time.monotonic()
            async with keeper.lease(5) as live:
                return time.monotonic() - started, live.number

    waited, number = run(scenario())
    assert number == 2
    assert waited < 1.5, waited


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
