"""The fake SLNG gateway itself, driven by a bare WebSocket client: each variant it claims to
speak (docs/protocols.md, "SLNG"), so that the voice's tests against it mean something."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fake_deepgram import synthesize
from tests.fake_slng import FakeSlng, FakeSlngOptions, Route

KEY = "slng-test-key"
INIT = {
    "type": "init",
    "model": "aura:2",
    "voice": "aura-2-thalia-en",
    "config": {"encoding": "linear16", "sample_rate": 24000},
}


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def fast(**overrides: Any) -> FakeSlngOptions:
    return FakeSlngOptions(**{"first_byte_s": 0.0, **overrides})


async def dial(server: FakeSlng, route: Route = "bridge", key: str = KEY) -> ClientConnection:
    url = server.template_for(route).format(provider="deepgram", model="aura", variant="2")
    return await connect(url, additional_headers={"Authorization": f"Bearer {key}"})


async def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


async def read_until(ws: ClientConnection, *kinds: str) -> list[Any]:
    """Frames (bytes, or parsed JSON) up to and including the first JSON of one of these types
    (compared in lower case)."""
    frames: list[Any] = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        frames.append(frame if isinstance(frame, bytes) else json.loads(frame))
        if isinstance(frame, str) and frames[-1]["type"].lower() in kinds:
            return frames


async def greet(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(json.dumps(INIT))
    greeting: dict[str, Any] = (await read_until(ws, "ready", "metadata", "error"))[-1]
    return greeting


def audio_of(frames: list[Any]) -> bytes:
    out = b""
    for frame in frames:
        if isinstance(frame, bytes):
            out += frame
        elif frame["type"] == "audio_chunk":
            out += base64.b64decode(frame["data"])
    return out


@pytest.mark.parametrize(
    ("route", "options", "greeting", "flushed", "cleared"),
    [
        ("bridge", {}, "ready", "flushed", "cleared"),
        ("per-model", {}, "Metadata", "Flushed", "Cleared"),
        ("bridge", {"greeting": "Metadata"}, "metadata", "flushed", "cleared"),
        ("per-model", {"greeting": "ready", "capitalised": False}, "ready", "flushed", "cleared"),
        ("bridge", {"capitalised": True}, "Ready", "Flushed", "Cleared"),
    ],
    ids=["bridge", "per-model", "bridge+Metadata", "per-model+ready", "bridge+Capitalised"],
)
def test_each_route_greets_and_names_its_messages_in_its_own_case(
    route: Route, options: dict[str, Any], greeting: str, flushed: str, cleared: str
) -> None:
    async def scenario() -> tuple[dict[str, Any], list[Any], list[Any], list[str]]:
        async with FakeSlng(fast(**options)) as server:
            ws = await dial(server, route)
            hello = await greet(ws)
            await send(ws, "text", text="Hello.")
            await send(ws, "flush")
            spoken = await read_until(ws, "flushed")
            await send(ws, "text", text="Two.")
            await send(ws, "flush")
            second = await read_until(ws, "flushed")
            await send(ws, "clear")
            tail = await read_until(ws, "cleared")
            await ws.close()
            return hello, spoken, second + tail, server.paths

    hello, spoken, later, paths = run(scenario())
    assert hello["type"] == greeting
    if greeting.lower() == "ready":
        assert set(hello) == {"type", "session_id"}
    else:
        assert {"request_id", "model_name", "model_version", "model_uuid"} <= set(hello)
    assert audio_of(spoken) == synthesize("Hello.", 24000)
    ends = [f for f in spoken + later if isinstance(f, dict) and f["type"].lower() != "segment_end"]
    ends = [f for f in ends if f["type"].lower() in ("flushed", "cleared")]
    assert [f["type"] for f in ends] == [flushed, flushed, cleared]
    if flushed == "Flushed":  # Deepgram's form counts the flushes
        assert [f.get("sequence_id") for f in ends] == [0, 1, 1]
    prefix = "/v1/bridges/unmute/tts/" if route == "bridge" else "/v1/tts/"
    assert paths == [f"{prefix}deepgram/aura:2"]


def test_audio_comes_as_binary_frames_or_as_base64_audio_chunks_with_a_sequence() -> None:
    async def scenario() -> list[Any]:
        async with FakeSlng(fast(binary_audio=False, audio_end=True)) as server:
            ws = await dial(server)
            await greet(ws)
            await send(ws, "text", text="Chunks.")
            await send(ws, "flush")
            frames = await read_until(ws, "audio_end")
            await ws.close()
            return frames

    frames = run(scenario())
    chunks = [f for f in frames if not isinstance(f, bytes) and f["type"] == "audio_chunk"]
    assert not any(isinstance(f, bytes) for f in frames)
    assert [c["sequence"] for c in chunks] == list(range(len(chunks)))
    assert audio_of(frames) == synthesize("Chunks.", 24000)
    kinds = [f["type"] for f in frames if f["type"] != "audio_chunk"]
    assert kinds == ["segment_start", "segment_end", "flushed", "audio_end"]


@pytest.mark.parametrize(
    ("options", "kind", "nested"),
    [
        ({}, "error", False),
        ({"nested_errors": True}, "error", True),
        ({"capitalised": True}, "Error", False),
        ({"capitalised": True, "nested_errors": True}, "Error", True),
    ],
    ids=["error", "error-nested", "Error", "Error-nested"],
)
def test_errors_come_in_either_type_and_shape(
    options: dict[str, Any], kind: str, nested: bool
) -> None:
    async def scenario() -> dict[str, Any]:
        async with FakeSlng(fast(init_error=("auth_error", "bad key"), **options)) as server:
            ws = await dial(server)
            error = await greet(ws)
            await ws.close()
            return error

    error = run(scenario())
    assert error["type"] == kind
    detail = {"code": "auth_error", "message": "bad key"}
    assert error == ({"type": kind, "data": detail} if nested else {"type": kind, **detail})


@pytest.mark.parametrize(
    ("cancel", "answer"),
    [("refuse", "invalid_request"), ("ignore", None)],
    ids=["refused-like-the-newest-reference", "ignored"],
)
def test_cancel_is_not_in_the_newest_reference_so_it_is_refused_or_ignored(
    cancel: Any, answer: str | None
) -> None:
    async def scenario() -> list[Any]:
        async with FakeSlng(fast(cancel=cancel)) as server:
            ws = await dial(server)
            await greet(ws)
            await send(ws, "cancel")
            await send(ws, "clear")
            frames = await read_until(ws, "cleared", "error")
            await ws.close()
            return frames

    frames = run(scenario())
    if answer is None:
        assert frames == [{"type": "cleared"}]
    else:
        assert frames[0]["type"] == "error" and frames[0]["code"] == answer
        assert "cancel" in frames[0]["message"]


def test_after_an_error_the_session_is_spent_and_answers_nothing_but_close() -> None:
    async def scenario() -> tuple[list[Any], int | None]:
        async with FakeSlng(fast(keepalive_supported=False)) as server:
            ws = await dial(server)
            await greet(ws)
            await send(ws, "keepalive")
            frames = await read_until(ws, "error")
            await send(ws, "text", text="Nobody hears this.")
            await send(ws, "flush")
            await send(ws, "clear")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            await send(ws, "close")
            await ws.wait_closed()
            return frames, ws.close_code

    frames, code = run(scenario())
    assert frames[-1]["code"] == "invalid_request" and "keepalive" in frames[-1]["message"]
    assert code == 1000


def test_text_before_init_is_answered_not_ready() -> None:
    async def scenario() -> dict[str, Any]:
        async with FakeSlng(fast()) as server:
            ws = await dial(server)
            await send(ws, "text", text="Too early.")
            error: dict[str, Any] = (await read_until(ws, "error"))[-1]
            await ws.close()
            return error

    assert run(scenario())["code"] == "not_ready"


@pytest.mark.parametrize("audio_end", [False, True], ids=["after-flushed", "after-audio_end"])
def test_some_upstreams_close_normally_after_each_utterance(audio_end: bool) -> None:
    async def scenario() -> tuple[list[Any], int | None]:
        async with FakeSlng(fast(close_after_utterance=True, audio_end=audio_end)) as server:
            ws = await dial(server)
            await greet(ws)
            await send(ws, "text", text="Last words.")
            await send(ws, "flush")
            frames = []
            try:
                while True:
                    frame = await ws.recv()
                    frames.append(frame if isinstance(frame, bytes) else json.loads(frame))
            except ConnectionClosed:
                return frames, ws.close_code

    frames, code = run(scenario())
    last = "audio_end" if audio_end else "flushed"
    assert frames[-1]["type"] == last
    assert code == 1000


def test_a_transient_keepalive_error_is_counted_across_sockets() -> None:
    async def scenario() -> list[list[Any]]:
        async with FakeSlng(fast(keepalive_errors=1)) as server:
            answers = []
            for _ in range(2):
                ws = await dial(server)
                await greet(ws)
                await send(ws, "keepalive")
                try:
                    answers.append(await asyncio.wait_for(read_until(ws, "error"), 0.3))
                except TimeoutError:
                    answers.append([])
                await ws.close()
            return answers

    first, second = run(scenario())
    assert first[-1]["code"] == "backend_connection_failed"
    assert second == []


@pytest.mark.parametrize(
    ("idle_error", "idle_close"),
    [(False, True), (True, True), (True, False)],
    ids=["close", "error+close", "error-only"],
)
def test_an_idle_session_ends_with_an_error_a_close_or_both(
    idle_error: bool, idle_close: bool
) -> None:
    async def scenario() -> tuple[list[Any], int | None]:
        options = fast(idle_timeout_s=0.2, idle_error=idle_error, idle_close=idle_close)
        async with FakeSlng(options) as server:
            ws = await dial(server)
            await greet(ws)
            frames = []
            try:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.6)))
            except (ConnectionClosed, TimeoutError):
                pass
            await ws.close()  # when the fake has not closed it
            return frames, ws.close_code

    frames, code = run(scenario())
    assert [f["code"] for f in frames] == (["idle_timeout_exceeded"] if idle_error else [])
    assert code == (1011 if idle_close else 1000)


def test_a_mid_utterance_error_cuts_the_audio_and_ends_nothing() -> None:
    async def scenario() -> list[Any]:
        async with FakeSlng(fast(mid_error=("backpressure", "slow down"))) as server:
            ws = await dial(server)
            await greet(ws)
            await send(ws, "text", text="A long enough utterance to be cut.")
            await send(ws, "flush")
            frames = await read_until(ws, "error")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)  # spent: no more audio, no end marker
            await ws.close()
            return frames

    frames = run(scenario())
    assert sum(isinstance(f, bytes) for f in frames) == 3
    assert frames[-1]["code"] == "backpressure"


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [("/v1/speak", KEY, 404), ("/v1/tts/deepgram/aura:2", "wrong", 401)],
    ids=["unknown-route", "wrong-key"],
)
def test_handshakes_are_refused_for_an_unknown_route_or_a_wrong_key(
    path: str, key: str, status: int
) -> None:
    async def scenario() -> int:
        async with FakeSlng(fast()) as server:
            url = f"ws://{server.host}:{server.port}{path}"
            with pytest.raises(InvalidStatus) as caught:
                await connect(url, additional_headers={"Authorization": f"Bearer {key}"})
            return caught.value.response.status_code

    assert run(scenario()) == status
