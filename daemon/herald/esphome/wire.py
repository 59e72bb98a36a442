"""ESPHome's native API on the wire: its frames, plaintext and Noise-encrypted (pure, no I/O).

A plaintext frame is `0x00`, the payload's length (varint), the message type (varint), the
payload (a protobuf message). An encrypted frame is `0x01`, a 16-bit big-endian length, and
that many bytes: during the handshake, the handshake's own bytes; afterwards one encrypted
message, whose plaintext is the type and length (16 bits each) and the protobuf payload.
The message definitions are aioesphomeapi's (api_pb2), the ones Home Assistant uses.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAINTEXT = 0x00
ENCRYPTED = 0x01
MAX_FRAME = 64 * 1024  # no message Herald takes is near this: a bigger one ends the connection


class FrameError(ValueError):
    """The bytes are not ESPHome API frames: the connection cannot go on."""


@dataclass(frozen=True, slots=True)
class Packet:
    kind: int  # the message type number
    data: bytes


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def plaintext_frame(packet: Packet) -> bytes:
    return bytes([PLAINTEXT]) + varint(len(packet.data)) + varint(packet.kind) + packet.data


def encrypted_frame(payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise FrameError("a frame of more than 65535 bytes")
    return bytes([ENCRYPTED, len(payload) >> 8, len(payload) & 0xFF]) + payload


def message_payload(packet: Packet) -> bytes:
    """What an encrypted frame carries (before encryption) for one message."""
    size = len(packet.data)
    return bytes([packet.kind >> 8, packet.kind & 0xFF, size >> 8, size & 0xFF]) + packet.data


def message_from_payload(plain: bytes) -> Packet:
    if len(plain) < 4:
        raise FrameError("an encrypted message shorter than its header")
    size = (plain[2] << 8) | plain[3]
    if len(plain) < 4 + size:
        raise FrameError("an encrypted message shorter than it says")
    return Packet((plain[0] << 8) | plain[1], bytes(plain[4 : 4 + size]))


class Reader:
    """Bytes from the socket in; whole frames out. Memory bounded by MAX_FRAME."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.preamble: int | None = None  # the first byte seen: which protocol the client speaks

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if self.preamble is None and self._buffer:
            self.preamble = self._buffer[0]
        if len(self._buffer) > 2 * MAX_FRAME + 16:
            raise FrameError("more unread data than any frame")

    def plaintext(self) -> Packet | None:
        """The next plaintext message, or None until it has all arrived."""
        if not self._buffer:
            return None
        if self._buffer[0] != PLAINTEXT:
            raise FrameError(f"a plaintext frame starting with {self._buffer[0]:#04x}")
        position = 1
        size, position = self._varint(position)
        if size is None:
            return None
        kind, position = self._varint(position)
        if kind is None:
            return None
        if size > MAX_FRAME:
            raise FrameError(f"a message of {size} bytes")
        if len(self._buffer) < position + size:
            return None
        data = bytes(self._buffer[position : position + size])
        del self._buffer[: position + size]
        return Packet(kind, data)

    def encrypted(self) -> bytes | None:
        """The next encrypted frame's bytes, or None until it has all arrived."""
        if len(self._buffer) < 3:
            return None
        if self._buffer[0] != ENCRYPTED:
            raise FrameError(f"an encrypted frame starting with {self._buffer[0]:#04x}")
        size = (self._buffer[1] << 8) | self._buffer[2]
        if len(self._buffer) < 3 + size:
            return None
        frame = bytes(self._buffer[3 : 3 + size])
        del self._buffer[: 3 + size]
        return frame

    def _varint(self, position: int) -> tuple[int | None, int]:
        value, shift = 0, 0
        while position < len(self._buffer):
            byte = self._buffer[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, position
            shift += 7
            if shift > 28:
                raise FrameError("a varint longer than 5 bytes")
        return None, position
