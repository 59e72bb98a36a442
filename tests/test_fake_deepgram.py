"""The fake Deepgram Aura server enforces and reports each protocol rule, seen by a plain client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from tests.fake_deepgram import (
    PROSE,
    SEQUENCE_ID_FORMS,
    FakeDeepgram,
    FakeDeepgramOptions,
    SlidingWindow,
    _parse_args,
    close_reason,
    dominant_hz,
    pcm16,
    seconds_for,
    sequence_field,
    synthesize,
    tone_hz,
)

REPO = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Token test-key"}
QUERY = "?model=aura-2-thalia-en&encoding=linear16&sample_rate=16000"
RATE = 16000
LONG_TEXT = "This sentence is long enough to keep the fake speaking for a while."  # 4 s

Json = dict[str, Any]


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run one test's coroutine with an overall bound."""
    asyncio.run(asyncio.wait_for(main, 15))


@contextlib.asynccontextmanager
async def speak_socket(
    server: FakeDeepgram, query: str = QUERY, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    """An open socket whose Metadata has been read already."""
    async with connect(
        server.url + query, additional_headers=AUTH if headers is None else headers, open_timeout=5
    ) as ws:
        metadata = await recv_json(ws)
        assert metadata["type"] == "Metadata"
        yield ws


async def send(ws: ClientConnection, kind: str, **fields: str) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


async def say(ws: ClientConnection, *parts: str) -> None:
    for part in parts:
        await send(ws, "Speak", text=part)
    await send(ws, "Flush")


async def recv_json(ws: ClientConnection, within: float = 3.0) -> Json:
    async with asyncio.timeout(within):
        frame = await ws.recv()
    assert isinstance(frame, str), "expected a text frame"
    message: Json = json.loads(frame)
    return message


async def audio_until(
    ws: ClientConnection, kind: str, within: float = 5.0
) -> tuple[bytes, list[bytes], Json]:
    """Collect audio until a text frame of type `kind`; returns audio, its frames and that message.

    Any other text frame on the way fails the test.
    """
    frames: list[bytes] = []
    async with asyncio.timeout(within):
        while isinstance(frame := await ws.recv(), bytes):
            frames.append(frame)
    message: Json = json.loads(frame)
    assert message["type"] == kind, message
    return b"".join(frames), frames, message


async def closed_with(ws: ClientConnection, within: float = 3.0) -> tuple[int | None, str | None]:
    """Read (and drop) frames until the server closes; the close code and reason it sent."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason


async def silent_for(ws: ClientConnection, seconds: float) -> bool:
    """True if nothing at all arrives for `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await ws.recv()
    except TimeoutError:
        return True
    return False


async def refused_status(server: FakeDeepgram, query: str, headers: dict[str, str]) -> Any:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url + query, additional_headers=headers, open_timeout=5):
            pass
    return refused.value.response


# --- pure helpers ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(text=st.text(min_size=1, max_size=30), rate=st.sampled_from([8000, 16000, 24000, 48000]))
def test_dominant_hz_finds_the_tone_of_any_text(text: str, rate: int) -> None:
    samples = pcm16(synthesize(text, rate))
    assert 300 <= tone_hz(text) < 900
    assert len(samples) == round(seconds_for(text) * rate)
    assert dominant_hz(samples, rate) == pytest.approx(tone_hz(text), abs=1.0)


def test_sliding_window_forgets_old_amounts() -> None:
    window = SlidingWindow(60.0)
    window.add(0.0, 30)
    window.add(30.0, 20)
    assert window.total(59.0) == 50
    assert window.total(60.0) == 20
    assert window.total(90.0) == 0


# --- handshake -------------------------------------------------------------------------------


def test_metadata_comes_first_with_the_request_id() -> None:
    async def main() -> None:
        async with (
            FakeDeepgram() as server,
            connect(server.url + QUERY, additional_headers=AUTH) as ws,
        ):
            await say(ws, "Hello")  # sent before reading anything: Metadata still comes first
            metadata = await recv_json(ws)
            assert metadata["type"] == "Metadata"
            assert metadata["model_name"] == "aura-2-thalia-en"
            assert {"model_version", "model_uuid"} <= metadata.keys()
            assert ws.response is not None
            assert metadata["request_id"] == ws.response.headers["dg-request-id"]
            assert server.connections == 1

    run(main())


def test_missing_query_parameters_take_the_live_defaults() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, connect(server.url, additional_headers=AUTH) as ws:
            assert (await recv_json(ws))["model_name"] == "aura-asteria-en"
            await say(ws, "Hi")
            _, frames, _ = await audio_until(ws, "Flushed")
            assert len(frames[0]) == 24000 * 20 // 1000 * 2  # linear16 at 24 kHz, 20 ms

    run(main())


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Token wrong"}, {"Authorization": "Bearer test-key"}]
)
def test_bad_credentials_get_401_invalid_auth(headers: dict[str, str]) -> None:
    async def main() -> None:
        async with FakeDeepgram() as server:
            response = await refused_status(server, QUERY, headers)
            assert response.status_code == 401
            assert response.headers["dg-error"] == "INVALID_AUTH"
            assert server.refused == 1 and server.connections == 0

    run(main())


@pytest.mark.parametrize(
    ("query", "dg_error"),
    [
        ("?model=aura-nobody-en", "UNKNOWN_MODEL"),
        ("?sample_rate=44100", "UNSUPPORTED_SAMPLE_RATE"),
        ("?sample_rate=fast", "UNSUPPORTED_SAMPLE_RATE"),
        ("?encoding=opus", "UNSUPPORTED_ENCODING"),
        ("?speed=2.0", "INVALID_QUERY_PARAMETER"),
        ("?mip_opt_out=False", "INVALID_QUERY_PARAMETER"),
    ],
)
def test_bad_query_gets_400(query: str, dg_error: str) -> None:
    async def main() -> None:
        async with FakeDeepgram() as server:
            response = await refused_status(server, query, AUTH)
            assert (response.status_code, response.headers["dg-error"]) == (400, dg_error)
            assert server.refusals == [(400, dg_error)]

    run(main())


def test_wrong_path_gets_404() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server:
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    server.url.replace("/v1/speak", "/v1/listen"), additional_headers=AUTH
                )
            assert refused.value.response.status_code == 404

    run(main())


def test_handshake_status_refuses_until_cleared() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server:
            server.set_handshake_status(429)
            response = await refused_status(server, QUERY, AUTH)
            assert response.status_code == 429
            assert response.headers["dg-error"] == "TOO_MANY_REQUESTS"
            server.set_handshake_status(None)
            async with speak_socket(server):
                assert server.connections == 1 and server.refused == 1

    run(main())


def test_concurrency_limit_gets_429() -> None:
    async def main() -> None:
        async with FakeDeepgram(FakeDeepgramOptions(max_connections=1)) as server:
            async with speak_socket(server):
                assert (await refused_status(server, QUERY, AUTH)).status_code == 429
            await server.wait_until(lambda: server.open_connections == 0)
            async with speak_socket(server):
                pass

    run(main())


def test_round_trip_delays_the_handshake() -> None:
    async def main() -> None:
        async with FakeDeepgram(FakeDeepgramOptions(round_trip_s=0.1)) as server:
            started = time.monotonic()
            async with speak_socket(server):
                assert 0.3 <= time.monotonic() - started < 2.0

    run(main())


# --- speaking --------------------------------------------------------------------------------


def test_split_speak_and_flush_give_one_utterance_then_flushed() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await say(ws, "Hello ", "world")
            audio, frames, flushed = await audio_until(ws, "Flushed")
            assert flushed["sequence_id"] == 0
            assert audio == synthesize("Hello world", RATE)
            assert {len(frame) for frame in frames[:-1]} == {RATE * 20 // 1000 * 2}
            assert len(pcm16(audio)) / RATE == pytest.approx(seconds_for("Hello world"), abs=0.001)
            assert dominant_hz(pcm16(audio), RATE) == pytest.approx(tone_hz("Hello world"), abs=1)
            await say(ws, "Goodbye")
            audio, _, flushed = await audio_until(ws, "Flushed")
            assert flushed["sequence_id"] == 1
            assert dominant_hz(pcm16(audio), RATE) == pytest.approx(tone_hz("Goodbye"), abs=1)

    run(main())


def test_empty_flush_is_acknowledged_without_audio() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await send(ws, "Flush")
            audio, _, flushed = await audio_until(ws, "Flushed")
            assert audio == b"" and flushed["sequence_id"] == 0

    run(main())


def test_first_byte_comes_after_the_configured_delay() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(first_byte_s=0.3)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, "Hello")
            flushed_at = time.monotonic()
            async with asyncio.timeout(3):
                assert isinstance(await ws.recv(), bytes)
            assert 0.28 <= time.monotonic() - flushed_at < 1.5

    run(main())


def test_pace_one_streams_in_real_time() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(first_byte_s=0.0, pace=1.0)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, "x" * 10)  # 0.6 s of audio
            started = time.monotonic()
            await audio_until(ws, "Flushed")
            assert 0.45 <= time.monotonic() - started < 1.5

    run(main())


def test_clear_stops_audio_at_once_and_then_acknowledges() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(first_byte_s=0.0, pace=1.0)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, LONG_TEXT)
            for _ in range(5):
                assert isinstance(await asyncio.wait_for(ws.recv(), 2), bytes)
            await send(ws, "Speak", text="never spoken")
            await send(ws, "Clear")
            _, frames, cleared = await audio_until(ws, "Cleared", within=1.0)
            assert cleared["sequence_id"] == 0
            assert len(frames) <= 2  # in flight when Clear arrived
            assert await silent_for(ws, 0.4)  # no audio after Cleared, no Flushed of it
            await say(ws, "Next")
            audio, _, flushed = await audio_until(ws, "Flushed")
            assert flushed["sequence_id"] == 1
            assert dominant_hz(pcm16(audio), RATE) == pytest.approx(tone_hz("Next"), abs=1)

    run(main())


def test_clear_latency_lets_stale_audio_arrive_before_cleared() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(first_byte_s=0.0, pace=1.0, clear_latency_s=0.2)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, LONG_TEXT)
            assert isinstance(await asyncio.wait_for(ws.recv(), 2), bytes)
            await send(ws, "Clear")
            _, stale, _ = await audio_until(ws, "Cleared", within=2.0)
            assert len(stale) >= 5

    run(main())


@pytest.mark.parametrize("form", SEQUENCE_ID_FORMS)
def test_sequence_ids_take_the_chosen_form(form: str) -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(first_byte_s=0.0, sequence_ids=form)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            for n in range(3):
                await say(ws, f"Number {n}")
                flushed = (await audio_until(ws, "Flushed"))[2]
                assert flushed == {"type": "Flushed", **sequence_field(form, n)}
            await send(ws, "Clear")
            assert await recv_json(ws) == {"type": "Cleared", **sequence_field(form, 0)}

    run(main())


def test_the_forms_differ_as_named() -> None:
    assert [sequence_field("count", n) for n in range(3)] == [{"sequence_id": n} for n in range(3)]
    assert sequence_field("absent", 2) == {}
    assert sequence_field("float", 2) == {"sequence_id": 2.0}
    assert sequence_field("one_based", 2) == {"sequence_id": 3}
    assert sequence_field("constant", 2) == {"sequence_id": 0}
    with pytest.raises(ValueError, match="unknown sequence_id form"):
        sequence_field("roman", 2)


@pytest.mark.parametrize(
    ("mode", "order"),
    [
        ("none", ["Cleared"]),
        ("before", ["Flushed 0", "Flushed 1", "Cleared"]),
        ("after", ["Cleared", "Flushed 0", "Flushed 1"]),
    ],
)
def test_flushes_cut_by_clear_are_answered_as_chosen(mode: str, order: list[str]) -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(
            first_byte_s=0.0, pace=1.0, cleared_flushed=mode, stale_flushed_delay_s=0.3
        )
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, LONG_TEXT)  # Flush 0, speaking
            await say(ws, "queued")  # Flush 1, waiting its turn
            assert isinstance(await asyncio.wait_for(ws.recv(), 2), bytes)
            await send(ws, "Clear")
            seen: list[str] = []
            cleared_at = flushed_at = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while True:
                        frame = await ws.recv()
                        if isinstance(frame, bytes):
                            assert not seen, "audio after Cleared or a cut Flushed"
                            continue
                        message = json.loads(frame)
                        if message["type"] == "Cleared":
                            cleared_at = time.monotonic()
                            seen.append("Cleared")
                        else:
                            flushed_at = flushed_at or time.monotonic()
                            seen.append(f"{message['type']} {message['sequence_id']}")
            assert seen == order
            if mode == "after":
                assert flushed_at - cleared_at >= 0.25  # late: into the next announcement
            await say(ws, "Next")  # numbering goes on after the cut ones
            assert (await audio_until(ws, "Flushed"))[2]["sequence_id"] == 2

    run(main())


def test_a_late_flushed_arrives_in_the_middle_of_the_next_utterance() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(
            first_byte_s=0.0, pace=1.0, cleared_flushed="after", stale_flushed_delay_s=0.2
        )
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, LONG_TEXT)
            assert isinstance(await asyncio.wait_for(ws.recv(), 2), bytes)
            await send(ws, "Clear")
            await audio_until(ws, "Cleared")
            await say(ws, "A second utterance of two seconds or so")
            before, _, stale = await audio_until(ws, "Flushed")
            assert stale["sequence_id"] == 0 and len(before) > 0
            after, _, own = await audio_until(ws, "Flushed")
            assert own["sequence_id"] == 1
            assert before + after == synthesize("A second utterance of two seconds or so", RATE)

    run(main())


@pytest.mark.parametrize("style", ["code", "prose"])
@pytest.mark.parametrize(
    ("options", "code", "name"),
    [
        (FakeDeepgramOptions(lifetime_s=0.3), 1011, "NET-0003"),
        (FakeDeepgramOptions(idle_timeout_s=0.3), 1011, "NET-0001"),
    ],
    ids=["lifetime", "idle"],
)
def test_close_reasons_come_in_the_chosen_style(
    options: FakeDeepgramOptions, code: int, name: str, style: str
) -> None:
    async def main() -> None:
        async with FakeDeepgram(dataclasses.replace(options, reason_style=style)) as server:
            async with speak_socket(server) as ws:
                assert await closed_with(ws) == (code, close_reason(name, style))
            assert server.close_log == [(code, name)]  # the log keeps the bare code

    run(main())


def test_prose_reasons_name_the_code_in_a_link_and_fit_a_close_frame() -> None:
    for name in PROSE:
        reason = close_reason(name, "prose")
        assert reason.endswith(f"https://dpgr.am/{name.replace('-', '').lower()}")
        assert len(reason.encode()) <= 123
    assert close_reason("", "prose") == ""


def test_an_idle_socket_can_be_closed_normally() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(idle_timeout_s=0.3, idle_close_code=1000)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            assert await closed_with(ws) == (1000, "")
            assert server.close_log == [(1000, "")]

    run(main())


def test_unknown_forms_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        FakeDeepgram(FakeDeepgramOptions(cleared_flushed="sometimes"))


def test_the_variants_are_command_line_flags() -> None:
    options, _, _ = _parse_args(
        ["--sequence-ids", "absent", "--cleared-flushed", "after", "--stale-flushed-delay-s",
         "0.2", "--reason-style", "prose", "--idle-close-code", "1000"]
    )  # fmt: skip
    assert (options.sequence_ids, options.cleared_flushed, options.stale_flushed_delay_s) == (
        "absent",
        "after",
        0.2,
    )
    assert (options.reason_style, options.idle_close_code) == ("prose", 1000)


def test_close_finishes_pending_audio_then_closes_1000() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await say(ws, "Last words")
            await send(ws, "Close")
            audio, _, flushed = await audio_until(ws, "Flushed")
            assert audio == synthesize("Last words", RATE) and flushed["sequence_id"] == 0
            assert await closed_with(ws) == (1000, "")
            assert server.close_log == [(1000, "")]

    run(main())


# --- rule breaches ---------------------------------------------------------------------------


def test_reset_closes_1008_by_default() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await send(ws, "Reset")
            assert await closed_with(ws) == (1008, "DATA-0000")
            assert server.close_log == [(1008, "DATA-0000")]

    run(main())


def test_reset_acts_like_clear_without_ack_when_accepted() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(first_byte_s=0.0, pace=1.0, accept_reset=True)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await say(ws, LONG_TEXT)
            assert isinstance(await asyncio.wait_for(ws.recv(), 2), bytes)
            await send(ws, "Reset")
            await server.wait_until(lambda: server.received[-1]["message"] == {"type": "Reset"})
            await asyncio.sleep(0.1)  # let frames already in flight arrive
            while not await silent_for(ws, 0.05):
                pass
            assert await silent_for(ws, 0.3)  # audio stopped, and no acknowledgement
            await say(ws, "After reset")
            audio, _, flushed = await audio_until(ws, "Flushed")
            assert dominant_hz(pcm16(audio), RATE) == pytest.approx(tone_hz("After reset"), abs=1)
            assert flushed["sequence_id"] == 1
            assert server.close_log == []

    run(main())


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "KeepAlive"}',
        '{"type": "Nonsense"}',
        "not json",
        '["Speak"]',
        '{"type": "Speak", "text": 42}',
    ],
)
def test_invalid_commands_close_1008_data_0000(frame: str) -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await ws.send(frame)
            assert await closed_with(ws) == (1008, "DATA-0000")
            assert server.received[-1]["raw"] == frame

    run(main())


def test_binary_from_client_closes_1003() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await ws.send(b"\x00\x01")
            assert await closed_with(ws) == (1003, "MESSAGE-0000")

    run(main())


def test_oversize_speak_closes_1009() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(max_speak_chars=10)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await send(ws, "Speak", text="x" * 10)
            await send(ws, "Speak", text="x" * 11)
            assert await closed_with(ws) == (1009, "BIG-0001")
            assert server.speak_chars_total == 10

    run(main())


def test_oversize_message_closes_1009_big_0000() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(max_message_bytes=100)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await send(ws, "Speak", text="x" * 100)
            assert await closed_with(ws) == (1009, "BIG-0000")

    run(main())


def test_error_frames_precede_an_error_close_when_enabled() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(error_frames=True)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await send(ws, "KeepAlive")
            error = await recv_json(ws)
            assert (error["type"], error["err_code"]) == ("Error", "DATA-0000")
            assert await closed_with(ws) == (1008, "DATA-0000")

    run(main())


def test_character_budget_closes_1008_data_0001() -> None:
    async def main() -> None:
        async with FakeDeepgram(FakeDeepgramOptions(chars_per_minute=50)) as server:
            async with speak_socket(server) as ws:
                await send(ws, "Speak", text="x" * 30)
                await send(ws, "Speak", text="y" * 20)  # exactly at the limit: allowed
                await send(ws, "Speak", text="z")
                assert await closed_with(ws) == (1008, "DATA-0001")
            assert server.speak_chars_total == 50
            assert server.max_chars_in_window_seen == 51

    run(main())


def test_character_budget_window_slides() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(chars_per_minute=50, window_s=0.3)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            await send(ws, "Speak", text="x" * 40)
            await asyncio.sleep(0.4)
            await say(ws, "y" * 40)
            await audio_until(ws, "Flushed")
            assert server.max_chars_in_window_seen == 40 and server.close_log == []

    run(main())


@pytest.mark.parametrize(
    ("spec_fields", "keys"), [(False, ("warn_code", "warn_msg")), (True, ("code", "description"))]
)
def test_excess_flush_is_warned_and_ignored(spec_fields: bool, keys: tuple[str, str]) -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(flushes_per_minute=2, spec_warning_fields=spec_fields)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            for text in ("one", "two"):
                await say(ws, text)
                assert (await audio_until(ws, "Flushed"))[2]["sequence_id"] in (0, 1)
            await say(ws, "three")
            audio, _, warning = await audio_until(ws, "Warning")
            assert audio == b"" and warning[keys[0]] == "EXCESSIVE_FLUSH"
            assert isinstance(warning[keys[1]], str) and warning[keys[1]]
            assert await silent_for(ws, 0.3)  # the ignored flush produces nothing, socket open
            assert server.close_log == []

    run(main())


def test_lifetime_closes_1011_net_0003() -> None:
    async def main() -> None:
        async with FakeDeepgram(FakeDeepgramOptions(lifetime_s=0.5)) as server:
            started = time.monotonic()
            async with speak_socket(server) as ws:
                assert await closed_with(ws) == (1011, "NET-0003")
            assert 0.45 <= time.monotonic() - started < 2.0
            assert server.close_log == [(1011, "NET-0003")]

    run(main())


def test_idle_timeout_closes_1011_net_0001_and_pings_do_not_count() -> None:
    async def main() -> None:
        options = FakeDeepgramOptions(idle_timeout_s=0.3)
        async with FakeDeepgram(options) as server, speak_socket(server) as ws:
            for _ in range(4):  # messages keep the socket alive past the idle timeout
                await asyncio.sleep(0.15)
                await send(ws, "Speak", text="a")
            idle_since = time.monotonic()
            assert server.close_log == []
            with contextlib.suppress(ConnectionClosed):  # pings are answered, not messages
                for _ in range(30):
                    await asyncio.wait_for(await ws.ping(), 1)
                    await asyncio.sleep(0.05)
            assert await closed_with(ws) == (1011, "NET-0001")
            assert 0.25 <= time.monotonic() - idle_since < 1.5

    run(main())


# --- control and observation -----------------------------------------------------------------


def test_kill_all_drops_connections_without_a_close_frame() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await server.kill_all()
            with pytest.raises(ConnectionClosedError) as dropped:
                await asyncio.wait_for(ws.recv(), 3)
            assert dropped.value.rcvd is None
            assert server.close_log == [] and server.open_connections == 0

    run(main())


def test_close_all_closes_with_the_given_code() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server, speak_socket(server) as ws:
            await server.close_all(1011, "NET-0000")
            assert await closed_with(ws) == (1011, "NET-0000")
            assert server.close_log == [(1011, "NET-0000")]

    run(main())


def test_received_log_names_the_connection() -> None:
    async def main() -> None:
        async with FakeDeepgram() as server:
            async with speak_socket(server) as first, speak_socket(server) as second:
                await server.wait_for_connections(2, timeout=2)
                await send(first, "Speak", text="to first")
                await send(second, "Speak", text="to second")
                await server.wait_until(lambda: len(server.received) == 2)
            texts = {(entry["connection"], entry["message"]["text"]) for entry in server.received}
            assert texts == {(0, "to first"), (1, "to second")}
            assert server.speak_chars_total == len("to first") + len("to second")

    run(main())


def test_stopping_the_server_ends_every_connection_task() -> None:
    async def main() -> None:
        server = FakeDeepgram(FakeDeepgramOptions(first_byte_s=0.0, pace=1.0))
        async with server, speak_socket(server) as ws:
            await say(ws, LONG_TEXT)
            assert isinstance(await asyncio.wait_for(ws.recv(), 2), bytes)
            await server.stop()
            assert await closed_with(ws) == (1001, "")
            leftover = [
                task for task in asyncio.all_tasks() if task.get_name().startswith("fake-dg")
            ]
            assert leftover == [] and server.open_connections == 0

    run(main())


def test_command_line_prints_a_working_url() -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fake_deepgram", "--port", "0",
            "--first-byte-ms", "50", "--round-trip-ms", "10",
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            url = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/speak")
            async with connect(url + QUERY, additional_headers=AUTH, open_timeout=5) as ws:
                assert (await recv_json(ws))["type"] == "Metadata"
                await say(ws, "Hello")
                audio, _, _ = await audio_until(ws, "Flushed")
                assert audio == synthesize("Hello", RATE)
        finally:
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 10) == 0

    run(main())
