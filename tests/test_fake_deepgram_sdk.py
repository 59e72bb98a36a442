"""Deepgram's own Python SDK (deepgram-sdk 7.17) drives the fake Aura server and judges its replies.

A fake that speaks only the form Herald expects proves nothing about Deepgram. So here the vendor's
client (`client.speak.v1.connect`, async and sync) talks to the fake: the fake must accept its
handshake (its `Authorization: Token` header, its query encoding) and every message it can send,
and the vendor's typed models must accept what the fake sends back: Metadata, Flushed, Cleared and
Warning. The fake's deliberate deviations from the documented form are shown against the same
models: they reject a `sequence_id` that is absent or null (and, strictly, one that is a string, a
float or a bool), the live server's `warn_code`/`warn_msg` Warning and the `Error` frame, and have
nothing at all for close reasons; well-formed ids with the wrong values they cannot see. That is
why Herald parses the server's messages defensively.

Two things about SDK 7.17, both in its source, shape these tests. Its socket client's `recv()` and
iteration build messages *unchecked* (`construct_type`) and try `SpeakV1Flushed` first, whose `type`
admits any string: a Cleared, a live-form Warning and an Error all come back as a `SpeakV1Flushed`
carrying their own `type`, and a missing `sequence_id` comes back as None. So whether a frame of
the fake's is right is judged with the models' own validation (`model_validate`), not by the class
`recv()` happened to pick. And its sync `connect()` turns only websockets' legacy
`InvalidStatusCode` into its `ApiError`; websockets >= 14's sync client raises `InvalidStatus`.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import pydantic
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.fake_deepgram import (
    SEQUENCE_ID_FORMS,
    FakeDeepgram,
    FakeDeepgramOptions,
    JsonObject,
    synthesize,
)
from tests.support import FakeDeepgramThread

with warnings.catch_warnings():
    # SDK 7.17's async speak client is built on websockets' legacy client (deprecated in 14.0)
    # and imports the legacy InvalidStatusCode; that is the SDK's business, not this test's.
    warnings.simplefilter("ignore", DeprecationWarning)
    import deepgram.speak.v1.client  # noqa: F401  (imported here, its warnings silenced)
    from deepgram import AsyncDeepgramClient, DeepgramClient
    from deepgram.core.api_error import ApiError
    from deepgram.core.events import EventType
    from deepgram.environment import DeepgramClientEnvironment
    from deepgram.listen.v1.socket_client import AsyncV1SocketClient as AsyncListenSocket
    from deepgram.speak.v1.socket_client import AsyncV1SocketClient, V1SocketClient
    from deepgram.speak.v1.types import (
        SpeakV1Cleared,
        SpeakV1Flushed,
        SpeakV1Metadata,
        SpeakV1Text,
        SpeakV1Warning,
    )

KEY = "test-key"  # FakeDeepgramOptions' api_key
MODEL = "aura-2-thalia-en"
RATE = 16000
LONG_TEXT = "This sentence is long enough to keep the fake speaking for a while."  # 4 s

Message = SpeakV1Metadata | SpeakV1Flushed | SpeakV1Cleared | SpeakV1Warning  # what recv() parses
SERVER_MODELS: tuple[type[pydantic.BaseModel], ...] = (
    SpeakV1Metadata,
    SpeakV1Flushed,
    SpeakV1Cleared,
    SpeakV1Warning,
)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run one test's coroutine with an overall bound."""
    asyncio.run(asyncio.wait_for(main, 15))


def fast(**changes: Any) -> FakeDeepgramOptions:
    """The fake with no delay before the first audio byte, and the given changes."""
    return FakeDeepgramOptions(first_byte_s=0.0, **changes)


def environment(port: int) -> DeepgramClientEnvironment:
    """Every SDK endpoint on the fake; the speak socket is `production` + "/v1/speak"."""
    http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


def sdk_options(port: int) -> dict[str, Any]:
    # Without redact_credentials_in_logs=False the SDK adds a filter to the `websockets` loggers
    # of the whole test process; the fake's key is no secret.
    return {"environment": environment(port), "redact_credentials_in_logs": False}


@asynccontextmanager
async def sdk_socket(server: FakeDeepgram, **query: Any) -> AsyncIterator[AsyncV1SocketClient]:
    """The SDK's async speak socket on the fake, as the SDK's documentation opens it."""
    client = AsyncDeepgramClient(api_key=KEY, **sdk_options(server.port))
    speak = client.speak.v1.connect(model=MODEL, encoding="linear16", sample_rate=RATE, **query)
    async with speak as socket:
        yield cast(AsyncV1SocketClient, socket)


async def receive(socket: AsyncV1SocketClient, within: float = 3.0) -> bytes | Message:
    async with asyncio.timeout(within):
        return await socket.recv()


async def audio_then_message(socket: AsyncV1SocketClient) -> tuple[bytes, Message]:
    """The audio up to the next JSON message, and that message as the SDK parsed it."""
    audio = bytearray()
    while isinstance(message := await receive(socket), bytes):
        audio += message
    return bytes(audio), message


async def until_closed(socket: AsyncV1SocketClient, within: float = 5.0) -> list[bytes | Message]:
    """Everything the SDK yields until the server closes; the SDK's iteration ends without an
    error only on a normal close (1000 or 1001), else websockets' ConnectionClosedError."""
    received: list[bytes | Message] = []
    async with asyncio.timeout(within):
        async for message in socket:
            received.append(message)
    return received


async def open_and_leave(client: AsyncDeepgramClient) -> None:
    async with client.speak.v1.connect(model=MODEL):
        pass


def open_and_leave_sync(client: DeepgramClient) -> None:
    with client.speak.v1.connect(model=MODEL):
        pass


async def record_until_closed(socket: AsyncV1SocketClient, seen: dict[str, Message]) -> None:
    """Record each JSON message by its type until the socket closes (by raising, bounded)."""
    async with asyncio.timeout(3):
        while True:
            _, message = await audio_then_message(socket)
            seen[message.type] = message


def sent_json(server: FakeDeepgram, kind: str) -> list[JsonObject]:
    """The JSON frames of one type the fake sent, as it sent them."""
    return [message for _, message in server.sent if message["type"] == kind]


def rejected_by(model: type[pydantic.BaseModel], raw: JsonObject, *, strict: bool) -> bool:
    """Whether the vendor's model rejects the frame: lax is how the SDK validates (a string "1" is
    taken as 1); strict takes the JSON types at their word."""
    try:
        if strict:
            model.model_validate_json(json.dumps(raw), strict=True)
        else:
            model.model_validate(raw)
    except pydantic.ValidationError:
        return True
    return False


# --- handshake -------------------------------------------------------------------------------


def test_sdk_handshake_is_accepted_and_its_models_parse_the_metadata() -> None:
    async def main() -> None:
        async with (
            FakeDeepgram(fast()) as server,
            sdk_socket(server, speed=1.25, mip_opt_out=True) as socket,
        ):
            metadata = await receive(socket)
            assert isinstance(metadata, SpeakV1Metadata)
            assert metadata.model_name == MODEL
            [raw] = sent_json(server, "Metadata")
            assert metadata.request_id == raw["request_id"]
            assert not rejected_by(SpeakV1Metadata, raw, strict=True)
            assert SpeakV1Metadata.model_validate(raw).model_extra == {}  # no unknown field
            assert (server.connections, server.refused) == (1, 0)
            # The SDK's query (sample_rate, speed, mip_opt_out as "true") reached the fake intact.
            await socket.send_text(SpeakV1Text(text="Hi"))
            await socket.send_flush()
            audio, _ = await audio_then_message(socket)
            assert audio == synthesize("Hi", RATE, speed=1.25)

    run(main())


@pytest.mark.parametrize(
    "credentials",
    [{"api_key": "wrong-key"}, {"access_token": KEY}],
    ids=["wrong-key", "key-as-bearer-token"],
)
def test_bad_credentials_get_a_401_the_sdk_reports(credentials: dict[str, str]) -> None:
    async def main() -> None:
        async with FakeDeepgram() as server:
            client = AsyncDeepgramClient(**credentials, **sdk_options(server.port))
            with pytest.raises(ApiError) as refused:
                await open_and_leave(client)
            assert refused.value.status_code == 401
            assert server.refusals == [(401, "INVALID_AUTH")] and server.connections == 0

    run(main())


@pytest.mark.timeout(15)  # the sync client's reads have no bound of their own
def test_the_sync_client_sees_the_401_too() -> None:
    with FakeDeepgramThread(FakeDeepgramOptions()) as fake:
        client = DeepgramClient(api_key="wrong-key", **sdk_options(fake.server.port))
        # SDK 7.17 wraps only the legacy InvalidStatusCode in ApiError: websockets >= 14's sync
        # client raises InvalidStatus, which passes through. Either way the status is 401.
        with pytest.raises((ApiError, InvalidStatus)) as refused:
            open_and_leave_sync(client)
        error = refused.value
        if isinstance(error, ApiError):
            status = error.status_code
        else:
            assert isinstance(error, InvalidStatus)
            status = error.response.status_code
        assert status == 401
        assert fake.server.refusals == [(401, "INVALID_AUTH")]


# --- what the SDK sends ----------------------------------------------------------------------


def test_the_sdk_sends_only_speak_flush_clear_and_close() -> None:
    senders = {name for name in dir(AsyncV1SocketClient) if name.startswith("send_")}
    assert senders == {"send_text", "send_flush", "send_clear", "send_close"}  # no KeepAlive
    assert {name for name in dir(V1SocketClient) if name.startswith("send_")} == senders
    assert "send_keep_alive" in dir(AsyncListenSocket)  # the check would see one if it existed

    async def main() -> None:
        async with FakeDeepgram(fast()) as server, sdk_socket(server) as socket:
            await socket.send_text(SpeakV1Text(text="Hi"))
            await socket.send_flush()
            await socket.send_clear()
            await socket.send_close()
            await until_closed(socket)
            assert [json.loads(frame["raw"]) for frame in server.received] == [
                {"type": "Speak", "text": "Hi"},
                {"type": "Flush"},
                {"type": "Clear"},
                {"type": "Close"},
            ]
            assert server.close_log == [(1000, "")]  # the fake took each one: no 1008 DATA-0000

    run(main())


# --- what the fake answers -------------------------------------------------------------------


def test_speak_and_flush_give_audio_then_a_flushed_the_sdk_parses() -> None:
    async def main() -> None:
        async with FakeDeepgram(fast()) as server, sdk_socket(server) as socket:
            assert isinstance(await receive(socket), SpeakV1Metadata)
            for n, parts in enumerate([["Hello ", "there."], ["Second announcement."]]):
                for part in parts:
                    await socket.send_text(SpeakV1Text(text=part))
                await socket.send_flush()
                audio, flushed = await audio_then_message(socket)
                assert audio == synthesize("".join(parts), RATE)
                assert isinstance(flushed, SpeakV1Flushed)
                assert (flushed.type, flushed.sequence_id) == ("Flushed", n)
            for raw in sent_json(server, "Flushed"):
                assert not rejected_by(SpeakV1Flushed, raw, strict=True)

    run(main())


def test_clear_cuts_the_audio_and_gets_a_cleared_the_sdk_parses() -> None:
    async def main() -> None:
        # In real time, so that the Clear lands while the audio is still flowing.
        async with FakeDeepgram(fast(pace=1.0)) as server, sdk_socket(server) as socket:
            assert isinstance(await receive(socket), SpeakV1Metadata)
            await socket.send_text(SpeakV1Text(text=LONG_TEXT))
            await socket.send_flush()
            assert isinstance(await receive(socket), bytes)
            await socket.send_clear()
            _, cleared = await audio_then_message(socket)  # audio already under way may come
            # The SDK hands a Cleared back as a SpeakV1Flushed (see the module docstring).
            assert isinstance(cleared, SpeakV1Flushed | SpeakV1Cleared)
            assert (cleared.type, cleared.sequence_id) == ("Cleared", 0)
            [raw] = sent_json(server, "Cleared")
            assert not rejected_by(SpeakV1Cleared, raw, strict=True)
            await socket.send_close()
            assert await until_closed(socket) == []  # nothing of the cleared text, then 1000
            assert server.close_log == [(1000, "")]

    run(main())


def test_close_finishes_the_audio_then_closes_1000() -> None:
    async def main() -> None:
        async with FakeDeepgram(fast()) as server, sdk_socket(server) as socket:
            events: list[tuple[EventType, object]] = []

            def recorder(kind: EventType) -> Callable[[object], None]:
                return lambda data: events.append((kind, data))

            for kind in EventType:
                socket.on(kind, recorder(kind))
            await socket.send_text(SpeakV1Text(text="Goodbye."))
            await socket.send_flush()
            await socket.send_close()
            async with asyncio.timeout(5):
                # Returns when the socket has closed (the SDK leaves this method unannotated).
                await cast(Callable[[], Awaitable[None]], socket.start_listening)()
            kinds = [kind for kind, _ in events]
            assert kinds[0] is EventType.OPEN and kinds[-1] is EventType.CLOSE
            assert EventType.ERROR not in kinds  # a close other than 1000/1001 would be one
            metadata, *audio, flushed = [data for kind, data in events if kind is EventType.MESSAGE]
            assert isinstance(metadata, SpeakV1Metadata)
            assert b"".join(cast(list[bytes], audio)) == synthesize("Goodbye.", RATE)
            assert isinstance(flushed, SpeakV1Flushed) and flushed.sequence_id == 0
            assert server.close_log == [(1000, "")]

    run(main())


@pytest.mark.timeout(15)  # the sync client's reads have no bound of their own
def test_the_sync_client_speaks_flushes_and_closes() -> None:
    """The SDK's sync client, as Deepgram's own examples use it, on the fake in its own thread."""
    with FakeDeepgramThread(fast()) as fake:
        client = DeepgramClient(api_key=KEY, **sdk_options(fake.server.port))
        speak = client.speak.v1.connect(model=MODEL, encoding="linear16", sample_rate=RATE)
        with speak as connected:
            socket = cast(V1SocketClient, connected)
            socket.send_text(SpeakV1Text(text="Hello from the sync client."))
            socket.send_flush()
            socket.send_close()
            received = list(socket)  # ends at the server's 1000 (other codes raise)
        metadata, *audio, flushed = received
        assert isinstance(metadata, SpeakV1Metadata) and metadata.model_name == MODEL
        assert b"".join(cast(list[bytes], audio)) == synthesize("Hello from the sync client.", RATE)
        assert isinstance(flushed, SpeakV1Flushed) and flushed.sequence_id == 0
        assert fake.server.close_log == [(1000, "")]


def test_excessive_flush_warning_in_the_spec_form_parses_and_keeps_the_socket() -> None:
    async def main() -> None:
        options = fast(flushes_per_minute=1, spec_warning_fields=True)
        async with FakeDeepgram(options) as server, sdk_socket(server) as socket:
            await socket.send_text(SpeakV1Text(text="Hi"))
            await socket.send_flush()
            await socket.send_flush()  # the second in the window: a warning, and ignored
            await socket.send_close()
            messages = [m for m in await until_closed(socket) if not isinstance(m, bytes)]
            [warning] = [m for m in messages if isinstance(m, SpeakV1Warning)]
            assert warning.code == "EXCESSIVE_FLUSH" and warning.description
            assert [m.type for m in messages if isinstance(m, SpeakV1Flushed)] == ["Flushed"]
            [raw] = sent_json(server, "Warning")
            assert not rejected_by(SpeakV1Warning, raw, strict=True)
            assert server.close_log == [(1000, "")]  # the warning did not close the socket

    run(main())


# --- the fake's deliberate deviations --------------------------------------------------------

# How the vendor's models judge each form of sequence_id the fake can send (SEQUENCE_ID_FORMS).
LAX_REJECTS = {"absent", "null"}  # the SDK's own (lax) validation
STRICT_REJECTS = LAX_REJECTS | {"string", "float", "bool"}  # "1", 1.0, true are not JSON ints
# "constant" and "one_based" are well-formed ints with the wrong values: no model can tell.


@pytest.mark.parametrize("form", SEQUENCE_ID_FORMS)
def test_sdk_models_reject_exactly_the_odd_sequence_id_forms(form: str) -> None:
    async def main() -> None:
        async with (
            FakeDeepgram(fast(sequence_ids=form)) as server,
            sdk_socket(server) as socket,
        ):
            await socket.send_text(SpeakV1Text(text="Hi"))
            await socket.send_flush()
            _, flushed = await audio_then_message(socket)
            while flushed.type != "Flushed":  # the Metadata
                _, flushed = await audio_then_message(socket)
            await socket.send_clear()
            _, cleared = await audio_then_message(socket)
            assert cleared.type == "Cleared"
            for message in (flushed, cleared):
                # recv() does not validate: it coerces what it can and leaves None for the rest.
                assert isinstance(message, SpeakV1Flushed | SpeakV1Cleared)
                expected = None if form in LAX_REJECTS else (1 if form == "one_based" else 0)
                assert message.sequence_id == expected
            for kind, model in (("Flushed", SpeakV1Flushed), ("Cleared", SpeakV1Cleared)):
                [raw] = sent_json(server, kind)
                assert rejected_by(model, raw, strict=False) == (form in LAX_REJECTS)
                assert rejected_by(model, raw, strict=True) == (form in STRICT_REJECTS)

    run(main())


@pytest.mark.parametrize("reason_style", ["code", "prose"])
def test_live_warning_error_frame_and_close_reason_are_outside_the_sdk_models(
    reason_style: str,
) -> None:
    async def main() -> None:
        options = fast(flushes_per_minute=1, error_frames=True, reason_style=reason_style)
        async with FakeDeepgram(options) as server, sdk_socket(server) as socket:
            await socket.send_text(SpeakV1Text(text="Hi"))
            await socket.send_flush()
            await socket.send_flush()  # the live form of the warning: warn_code/warn_msg
            seen: dict[str, Message] = {}
            while not {"Warning", "Flushed"} <= seen.keys():
                _, message = await audio_then_message(socket)
                seen[message.type] = message
            await socket.send_text(SpeakV1Text(text="x" * 2001))  # too long: Error, 1009
            with pytest.raises(ConnectionClosedError) as closed:
                await record_until_closed(socket, seen)
            # recv() files both unknown shapes under SpeakV1Flushed, keeping their fields.
            warning, error = seen["Warning"], seen["Error"]
            assert isinstance(warning, SpeakV1Flushed)
            assert cast(object, warning.sequence_id) is None  # whatever its annotation says
            assert (warning.model_extra or {}).get("warn_code") == "EXCESSIVE_FLUSH"
            assert isinstance(error, SpeakV1Flushed)
            assert (error.model_extra or {}).get("err_code") == "BIG-0001"
            [raw_warning] = sent_json(server, "Warning")
            assert rejected_by(SpeakV1Warning, raw_warning, strict=False)
            [raw_error] = sent_json(server, "Error")
            assert all(rejected_by(model, raw_error, strict=False) for model in SERVER_MODELS)
            # A close reason reaches the SDK's user only as websockets' exception, in either style.
            received = closed.value.rcvd
            assert received is not None and received.code == 1009
            assert "big0001" in received.reason.lower().replace("-", "")
            assert (received.reason == "BIG-0001") == (reason_style == "code")

    run(main())
