"""The responder's side of ESPHome's encryption: Noise_NNpsk0_25519_ChaChaPoly_SHA256 (sans-I/O).

The client (Home Assistant) speaks first: an empty frame (its "hello"), then a frame holding
0x00 and the first handshake message. The responder answers the hello with 0x01 (the protocol
it chose), its name and its MAC address (each NUL-terminated), and the handshake with 0x00 and
the second handshake message, or 0x01 and a reason ("Handshake MAC failure": the keys differ).
From then on each frame is one message, encrypted. The pre-shared key is the device's
`encryption_key` (base64 of 32 bytes); the prologue is fixed by ESPHome.
"""

from __future__ import annotations

import base64
import binascii
from enum import Enum

from noise.connection import NoiseConnection

PROTOCOL = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
PROLOGUE = b"NoiseAPIInit\x00\x00"
CHOSEN_PROTOCOL = b"\x01"
MAC_FAILURE = "Handshake MAC failure"


class NoiseFailure(Exception):
    """The handshake failed: `reply` is the frame to send before closing (may be empty)."""

    def __init__(self, reason: str, reply: bytes = b"") -> None:
        super().__init__(reason)
        self.reply = reply


def decode_key(key: str) -> bytes:
    """The 32 bytes of a base64 key; ValueError saying what is wrong (never the key)."""
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, not 32")
    return raw


class _Stage(Enum):
    HELLO = 1
    HANDSHAKE = 2
    READY = 3


class NoiseResponder:
    """One connection's encryption: frames' bytes in, what to send back out."""

    def __init__(self, key: bytes, name: str, mac: str) -> None:
        self._noise = NoiseConnection.from_name(PROTOCOL)
        self._noise.set_as_responder()
        self._noise.set_psks(key)
        self._noise.set_prologue(PROLOGUE)
        self._noise.start_handshake()
        self._hello = CHOSEN_PROTOCOL + name.encode() + b"\0" + mac.encode() + b"\0"
        self._stage = _Stage.HELLO

    @property
    def ready(self) -> bool:
        return self._stage is _Stage.READY

    def handshake(self, frame: bytes) -> bytes:
        """One handshake frame from the client; the frame to answer it with. Raises
        NoiseFailure when the client cannot be let in."""
        if self._stage is _Stage.HELLO:
            self._stage = _Stage.HANDSHAKE
            return self._hello  # (the client's hello carries nothing Herald needs)
        if self._stage is not _Stage.HANDSHAKE:
            raise NoiseFailure("a handshake frame after the handshake")
        if not frame or frame[0] != 0x00:
            raise NoiseFailure("a handshake frame of an unknown kind", b"\x01Bad handshake")
        try:
            self._noise.read_message(frame[1:])
        except Exception:  # cryptography's InvalidTag, or a malformed message
            raise NoiseFailure("the client's key differs", b"\x01" + MAC_FAILURE.encode()) from None
        reply = b"\x00" + bytes(self._noise.write_message())
        self._stage = _Stage.READY
        return reply

    def decrypt(self, frame: bytes) -> bytes:
        try:
            return bytes(self._noise.decrypt(frame))
        except Exception:
            raise NoiseFailure("a message that does not decrypt") from None

    def encrypt(self, plain: bytes) -> bytes:
        return bytes(self._noise.encrypt(plain))
