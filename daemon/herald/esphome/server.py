"""Herald as an ESPHome device: the native API server Home Assistant's ESPHome integration uses.

One TCP listener (`esphome.port`, 6053); each connection speaks plaintext, or, with an
`encryption_key`, only Noise (herald.esphome.noise): a client without the key never gets past
the handshake. What is served: hello and login (no password: Herald has none), the device's
description, one media player entity (herald.esphome.player), its state to every client that
subscribed, pings, and a clean disconnect. Anything a client sends that is not the protocol
costs it its connection and one log line; nothing it sends reaches the log unescaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aioesphomeapi.api_pb2 import (  # type: ignore[attr-defined]
    AuthenticationRequest,
    AuthenticationResponse,
    DeviceInfoRequest,
    DeviceInfoResponse,
    DisconnectRequest,
    DisconnectResponse,
    HelloRequest,
    HelloResponse,
    ListEntitiesDoneResponse,
    ListEntitiesRequest,
    MediaPlayerCommandRequest,
    PingRequest,
    PingResponse,
    SubscribeStatesRequest,
)
from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from google.protobuf.message import DecodeError, Message

from herald import __version__
from herald.esphome.noise import NoiseFailure, NoiseResponder
from herald.esphome.player import MediaPlayer
from herald.esphome.wire import (
    ENCRYPTED,
    PLAINTEXT,
    FrameError,
    Packet,
    Reader,
    encrypted_frame,
    message_from_payload,
    message_payload,
    plaintext_frame,
)
from herald.logsafe import shown

log = logging.getLogger(__name__)

PROTO_TO_TYPE: dict[type[Message], int] = {cls: n for n, cls in MESSAGE_TYPE_TO_PROTO.items()}
API_VERSION = (1, 10)  # the version whose media player Home Assistant drives as it is used here
ESPHOME_VERSION = "2025.12.0"  # what the device info claims to speak (Home Assistant reads it)
MAX_CLIENTS = 8
IDLE_TIMEOUT_S = 120.0  # Home Assistant pings every 20 s; a silent client is gone
HANDSHAKE_TIMEOUT_S = 10.0
MAX_UNSENT_BYTES = 1024 * 1024  # a client that lets this much pile up is not reading: closed


@dataclass(frozen=True)
class Device:
    """Who Herald is to Home Assistant."""

    name: str  # ESPHome's device name: lower case, digits and '-'
    friendly_name: str
    mac: str  # stable, "02:..." (locally administered): Home Assistant keys the device on it
    key: bytes | None  # the Noise pre-shared key; None: plaintext


class EsphomeServer:
    def __init__(self, device: Device, player: MediaPlayer, port: int, host: str = "") -> None:
        self.device = device
        self.player = player
        self._port = port
        self._host = host or None
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the one the system gave for 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        encrypted = "encrypted (Noise)" if self.device.key else "plaintext: see docs/esphome.md"
        log.info("esphome: serving the native API on port %d, %s", self.port, encrypted)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    def state_changed(self) -> None:
        """Send the media player's state to every client that subscribed."""
        message = self.player.state_message()
        for client in list(self._clients):
            if client.subscribed:
                client.send(message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a client"
        if len(self._clients) >= MAX_CLIENTS:
            waiting = [client for client in self._clients if not client.greeted]
            if not waiting:
                log.warning("esphome: refused %s: %d clients already connected", where, MAX_CLIENTS)
                writer.close()
                return
            waiting[0].close()  # one that has not even said hello makes room for this one
        client = _Client(self, reader, writer, where)
        self._clients.add(client)
        try:
            await client.run()
        finally:
            self._clients.discard(client)
            client.close()


class _Client:
    """One connection: frames in, messages answered."""

    def __init__(
        self,
        server: EsphomeServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        where: str,
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self.where = where
        self._frames = Reader()
        key = server.device.key
        self._noise = (
            None if key is None else NoiseResponder(key, server.device.name, server.device.mac)
        )
        self.subscribed = False
        self.greeted = False  # it said hello (after the encryption's handshake, if any)
        self._done = False

    async def run(self) -> None:
        """Until the client leaves: its hello within HANDSHAKE_TIMEOUT_S of connecting (the
        handshake included, however it trickles in), then a message at least every
        IDLE_TIMEOUT_S (Home Assistant pings every 20 s)."""
        loop = asyncio.get_running_loop()
        hello_by = loop.time() + HANDSHAKE_TIMEOUT_S
        try:
            while not self._done:
                left = IDLE_TIMEOUT_S if self.greeted else hello_by - loop.time()
                if left <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(self._reader.read(65536), left)
                if not data:
                    return
                self._frames.feed(data)
                self._take_frames()
        except TimeoutError:
            what = "said nothing for too long" if self.greeted else "did not say hello in time"
            log.info("esphome: %s %s; closed", self.where, what)
        except (FrameError, NoiseFailure, DecodeError) as exc:
            log.warning("esphome: closed %s: %s", self.where, shown(str(exc), 200))
        except ConnectionError:
            return
        except Exception as exc:  # a bug must cost this connection, not the server
            log.error("esphome: closed %s after an error: %s", self.where, shown(repr(exc), 200))
            log.debug("esphome: the error was here", exc_info=True)

    def _take_frames(self) -> None:
        if self._noise is None:
            if self._frames.preamble == ENCRYPTED:
                self._write(plaintext_frame(Packet(PROTO_TO_TYPE[DisconnectRequest], b"")))
                raise FrameError("it speaks encrypted; this Herald has no esphome.encryption_key")
            while not self._done and (packet := self._frames.plaintext()) is not None:
                self._handle(packet)
            return
        if self._frames.preamble == PLAINTEXT:
            self._write(encrypted_frame(b"\x01Bad indicator byte"))
            raise FrameError("it speaks plaintext; this Herald requires the encryption key")
        while not self._done and (frame := self._frames.encrypted()) is not None:
            if not self._noise.ready:
                try:
                    self._write(encrypted_frame(self._noise.handshake(frame)))
                except NoiseFailure as failure:
                    if failure.reply:
                        self._write(encrypted_frame(failure.reply))
                    raise
                continue
            self._handle(message_from_payload(self._noise.decrypt(frame)))

    def _handle(self, packet: Packet) -> None:
        kind = MESSAGE_TYPE_TO_PROTO.get(packet.kind)
        if kind is None:
            log.debug("esphome: %s sent message type %d, unknown", self.where, packet.kind)
            return
        message = kind.FromString(packet.data)
        for answer in self._answer(message):
            self.send(answer)

    def _answer(self, message: Message) -> list[Message]:
        device, player = self._server.device, self._server.player
        if isinstance(message, HelloRequest):
            self.greeted = True
            major, minor = API_VERSION
            info = f"Herald {__version__}"
            name = device.name
            return [
                HelloResponse(
                    api_version_major=major, api_version_minor=minor, server_info=info, name=name
                )
            ]
        if isinstance(message, AuthenticationRequest):
            return [AuthenticationResponse(invalid_password=False)]
        if isinstance(message, DeviceInfoRequest):
            return [self._device_info()]
        if isinstance(message, ListEntitiesRequest):
            return [player.description(), ListEntitiesDoneResponse()]
        if isinstance(message, SubscribeStatesRequest):
            self.subscribed = True
            return [player.state_message()]
        if isinstance(message, PingRequest):
            return [PingResponse()]
        if isinstance(message, DisconnectRequest):
            self.send(DisconnectResponse())
            self._done = True
            return []
        if isinstance(message, MediaPlayerCommandRequest):
            if (problem := player.command(message)) is not None:
                log.warning("esphome: %s: %s", self.where, shown(problem, 200))
            return []
        log.debug("esphome: %s sent %s; nothing to do", self.where, type(message).__name__)
        return []

    def _device_info(self) -> DeviceInfoResponse:
        device = self._server.device
        return DeviceInfoResponse(
            uses_password=False,
            name=device.name,
            friendly_name=device.friendly_name,
            mac_address=device.mac,
            esphome_version=ESPHOME_VERSION,
            model="Herald",
            manufacturer="Herald",
            project_name="herald.speaker",
            project_version=__version__,
            api_encryption_supported=device.key is not None,
        )

    def send(self, message: Message) -> None:
        packet = Packet(PROTO_TO_TYPE[type(message)], message.SerializeToString())
        if self._noise is None:
            self._write(plaintext_frame(packet))
        elif self._noise.ready:
            self._write(encrypted_frame(self._noise.encrypt(message_payload(packet))))

    def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            log.warning("esphome: closed %s: it does not read what Herald sends", self.where)
            self.close()
            return
        self._writer.write(data)

    def close(self) -> None:
        self._done = True
        if not self._writer.is_closing():
            self._writer.close()
