"""Deepgram Aura streaming TTS: the protocol (pure) and the voice that speaks over a warm socket.

Protocol facts, with their sources, are in docs/protocols.md ("Deepgram Aura"): text frames
`Speak`, `Flush`, `Clear` (`Reset` in the older spec), `Close`; the server answers with binary
linear16 audio and `Metadata`, `Flushed`, `Cleared`, `Warning` (two field shapes) and, in the seed
spec, `Error`. Errors arrive as close codes whose reason names a code (first, or inside prose),
or as HTTP statuses during the handshake. What Deepgram does not promise, Herald checks: which
Flush a `Flushed` answers (its `sequence_id`, see FlushLedger) and how long an unused socket
lives (the keeper learns it from the idle closes).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed

from herald.budget import SlidingBudget
from herald.config import DeepgramConfig
from herald.voice.base import VoiceError
from herald.voice.protocol import Failure, FailureKind, split_text
from herald.voice.socket import LiveSocket, SocketKeeper, SocketSpec
from herald.voice.streaming import (
    END,
    FrameMeaning,
    SocketFailed,
    SocketVoice,
    Utterance,
    cold_check,
)

log = logging.getLogger(__name__)

MAX_SPEAK_CHARS = 2000
SAMPLE_RATES = (8000, 16000, 24000, 32000, 48000)


# --- client messages ------------------------------------------------------------------------


def speak(text: str) -> str:
    return json.dumps({"type": "Speak", "text": text}, ensure_ascii=False)


FLUSH = json.dumps({"type": "Flush"})
CLOSE = json.dumps({"type": "Close"})


def clear(message_name: str = "Clear") -> str:
    """`Clear` for today's service; `Reset` for servers that follow the older spec."""
    return json.dumps({"type": message_name})


def socket_url(base: str, model: str, sample_rate: int) -> str:
    """The URL with the query parameters fixed for the life of a socket."""
    parts = urlsplit(base)
    query = urlencode({"model": model, "encoding": "linear16", "sample_rate": sample_rate})
    return urlunsplit(parts._replace(query=query))


def request_rate(device_rate: int) -> int:
    """The rate to ask for: the device's own when Deepgram offers it, so nothing is resampled."""
    return device_rate if device_rate in SAMPLE_RATES else 48000


# --- server messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class Metadata:
    request_id: str
    model_name: str


@dataclass(frozen=True)
class Flushed:
    sequence_id: int | None


@dataclass(frozen=True)
class Cleared:
    sequence_id: int | None


@dataclass(frozen=True)
class Warning:  # the protocol's own name for it
    code: str
    description: str


@dataclass(frozen=True)
class Error:
    code: str
    description: str


@dataclass(frozen=True)
class Unknown:
    text: str


ServerEvent = Audio | Metadata | Flushed | Cleared | Warning | Error | Unknown


def decode(frame: str | bytes) -> ServerEvent:
    """One frame from the server as a typed event; never raises."""
    if isinstance(frame, bytes):
        return Audio(frame)
    try:
        message: dict[str, Any] = json.loads(frame)
        kind = message.get("type")
    except (ValueError, AttributeError):
        return Unknown(frame[:200])
    if kind == "Flushed":
        return Flushed(_int_or_none(message.get("sequence_id")))
    if kind == "Cleared":
        return Cleared(_int_or_none(message.get("sequence_id")))
    if kind == "Metadata":
        return Metadata(str(message.get("request_id", "")), str(message.get("model_name", "")))
    if kind == "Warning":  # the live server says warn_code/warn_msg; the spec code/description
        code = message.get("warn_code", message.get("code", ""))
        return Warning(str(code), str(message.get("warn_msg", message.get("description", ""))))
    if kind == "Error":
        code = message.get("err_code", message.get("code", ""))
        return Error(str(code), str(message.get("err_msg", message.get("description", ""))))
    return Unknown(frame[:200])


def _int_or_none(value: object) -> int | None:
    """A sequence_id as an int: 3, "3" and 3.0 (the SDK types it as a number) are 3; anything
    else (absent, null, true, 3.5, "x") is None, an id Herald cannot use."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        return int(value)
    except ValueError:
        return None


# --- which Flush a Flushed answers --------------------------------------------------------------


class Verdict(enum.Enum):
    CURRENT = "it ends the announcement"
    STALE = "it answers a Flush that Clear cut short"
    UNSURE = "it cannot be told apart"


class FlushLedger:
    """One socket's Flushes, to tell the Flushed that ends the announcement from a stale one.

    Herald's model: the server numbers the Flushes of a socket 0, 1, 2, ... and each Flushed
    carries the number of the Flush it answers. Deepgram's docs show only `"sequence_id": 0` for
    the first; the SDK types it as a number. So the answers are checked against the model:
    `confirmed` once a Flushed carried the predicted number, `contradicted` once one carried
    another number or none. A Flush cut short by Clear is `abandoned`: its Flushed
    may come before Cleared, after it, or never. Pure: no I/O, no clock.
    """

    def __init__(self) -> None:
        self.sent = 0  # Flushes sent on this socket; the next one is number `sent`
        self.waiting: int | None = None  # the number of the Flush the announcement waits on
        self.abandoned: set[int] = set()  # numbers of Flushes whose Flushed may still come
        self.confirmed = False
        self.contradicted = False

    def flush(self) -> None:
        self.waiting, self.sent = self.sent, self.sent + 1

    def clear(self) -> None:
        """Clear was sent: the Flush waited on, if any, is abandoned."""
        if self.waiting is not None:
            self.abandoned.add(self.waiting)
            self.waiting = None

    def answer(self, sequence_id: int | None) -> Verdict:
        """Whose Flushed this is."""
        if sequence_id is not None and sequence_id == self.waiting:
            self.confirmed = True
            self.waiting = None
            return Verdict.CURRENT
        if sequence_id is not None and sequence_id in self.abandoned:
            self.abandoned.discard(sequence_id)
            return Verdict.STALE
        # Not a number the model predicts: the numbers say nothing. Only which Flushes are
        # outstanding still tells whose it is.
        self.contradicted = True
        if self.waiting is None:  # only abandoned Flushes are outstanding
            if len(self.abandoned) == 1:
                self.abandoned.clear()
            return Verdict.STALE
        if not self.abandoned:  # only the announcement's own Flush is outstanding
            self.waiting = None
            return Verdict.CURRENT
        return Verdict.UNSURE


# --- failures -------------------------------------------------------------------------------


_REASON_CODE = re.compile(r"(?<![a-z])(net|data|big|message)-?(\d{4})(?!\d)", re.IGNORECASE)


def reason_code(reason: str) -> str | None:
    """The Deepgram code a close reason names, spelt `NET-0001`, wherever it stands: first
    ("NET-0001"), or in prose ("... See https://dpgr.am/net0001"), in any case."""
    found = _REASON_CODE.search(reason)
    return f"{found[1].upper()}-{found[2]}" if found else None


def classify_close(code: int | None, reason: str) -> Failure:
    """What a close frame from Deepgram means for Herald: the code its reason names decides,
    else the close code."""
    said = f"{code} {reason}".strip() if code is not None else "no close frame"
    named = reason_code(reason)
    if named == "NET-0003":
        return Failure(FailureKind.LIFETIME, f"socket reached the 60-minute limit ({said})")
    if named == "NET-0001":
        return Failure(FailureKind.IDLE, f"no message from Herald in time ({said})")
    if named == "DATA-0001":
        return Failure(FailureKind.RATE_LIMITED, f"too many characters per minute ({said})")
    if named == "DATA-0000":
        return Failure(
            FailureKind.CONFIG,
            f"server refused a message ({said}); if clear_message is 'Reset', set it to 'Clear'",
        )
    if named in ("MESSAGE-0000", "BIG-0000", "BIG-0001") or code in (1003, 1009):
        return Failure(FailureKind.TRANSIENT, f"server refused a message ({said}): a Herald bug")
    if named is not None and named.startswith("NET-"):
        return Failure(FailureKind.TRANSIENT, f"server error ({said})")
    if code == 1000:
        return Failure(FailureKind.TRANSIENT, f"closed by the server ({said})")
    return Failure(FailureKind.TRANSIENT, f"connection lost ({said})")


def classify_handshake(status: int, dg_error: str | None) -> Failure:
    """What an HTTP status refusing the WebSocket upgrade means."""
    said = f"HTTP {status}" + (f" {dg_error}" if dg_error else "")
    if status == 400:
        return Failure(FailureKind.CONFIG, f"{said}: check voice.deepgram.model and url")
    if status in (401, 402, 403):
        hint = {
            401: "the API key was refused",
            402: "the account has no credit left",
            403: "the key lacks permission for text-to-speech",
        }[status]
        return Failure(FailureKind.AUTH, f"{said}: {hint}")
    if status == 429:
        return Failure(FailureKind.RATE_LIMITED, f"{said}: too many concurrent sockets")
    return Failure(FailureKind.TRANSIENT, f"{said}: server unavailable")


# --- the voice --------------------------------------------------------------------------------

STALL_TIMEOUT_S = 5.0  # no audio for this long in the middle of an utterance: the socket is dead
EXCESSIVE_FLUSH = "EXCESSIVE_FLUSH"  # the warning that says the server ignored a Flush
NO_KEY = (
    "deepgram has no API key: set voice.deepgram.api_key_file, $DEEPGRAM_API_KEY, "
    "or the systemd credential 'deepgram_api_key'"
)


class DeepgramVoice(SocketVoice):
    """Aura over one warm socket: text in as Speak messages and one Flush, linear16 audio out."""

    name = "deepgram"
    no_key = NO_KEY

    def __init__(
        self,
        cfg: DeepgramConfig,
        api_key: str | None,
        output_rate: int,
        clock: Callable[[], float] = time.monotonic,
        budget_window_s: float = 60.0,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self.connect_wait_s = cfg.connect_wait_s
        self.first_audio_timeout_s = cfg.first_audio_timeout_s
        self.stall_timeout_s = STALL_TIMEOUT_S
        self._output_rate = output_rate
        self._input_rate = request_rate(output_rate)
        # The server's limits are per minute; tests shorten the window on both sides.
        self._chars = SlidingBudget(cfg.chars_per_minute, budget_window_s)
        self._flushes = SlidingBudget(cfg.flushes_per_minute, budget_window_s)
        # Whether the server's sequence_id numbers the Flushes as FlushLedger expects: None
        # until a Flushed shows it, then True, or False for good once one contradicts it.
        self.ids_trusted: bool | None = None
        self.keeper = None if not api_key else SocketKeeper(self._spec(api_key), clock)

    def _spec(self, api_key: str) -> SocketSpec:
        return SocketSpec(
            name=self.name,
            url=socket_url(self._cfg.url, self._cfg.model, self._input_rate),
            headers={"Authorization": f"Token {api_key}"},
            max_age_s=self._cfg.max_age_s,
            classify_close=classify_close,
            classify_handshake=classify_handshake,
            error_header="dg-error",
            goodbye=CLOSE,
            idle_normal_close=True,  # a 1000 close of an unused socket is an idle timeout too
        )

    async def _send_text(self, said: Utterance) -> None:
        """Speak messages within the character budget, then one Flush within the Flush budget."""
        connection = said.live.connection
        ledger = _ledger(said.live)
        for piece in split_text(said.text, MAX_SPEAK_CHARS):
            await self._within(self._chars, len(piece))
            await connection.send(speak(piece))
        await self._within(self._flushes, 1)
        ledger.flush()  # counted first: a Flush cut off while sending errs towards a replay
        await connection.send(FLUSH)

    def _read(self, frame: str | bytes, said: Utterance) -> FrameMeaning:
        """Audio; the end at the Flushed that answers this text's Flush; else nothing."""
        event = decode(frame)
        if isinstance(event, Audio):
            return event.data
        if isinstance(event, Flushed):
            return END if self._whose(_ledger(said.live), event) is Verdict.CURRENT else None
        if isinstance(event, Warning) and event.code == EXCESSIVE_FLUSH:
            # No Flushed will come for this text: a fresh socket speaks it at once.
            ignored = Failure(
                FailureKind.RATE_LIMITED,
                f"the server ignored the Flush ({event.code}: {event.description})",
            )
            raise SocketFailed(ignored)
        _note(event)
        return None

    def _sign_of_life(self, audio: bytes) -> bool:
        return True  # any audio frame, even an empty one

    def _whose(self, ledger: FlushLedger, event: Flushed) -> Verdict:
        """Whose Flushed this is; what it showed of the numbering is kept for every socket.
        Raises SocketFailed (replay on a fresh socket) when it cannot be told."""
        expected, abandoned = ledger.waiting, sorted(ledger.abandoned)
        verdict = ledger.answer(event.sequence_id)
        if ledger.contradicted and self.ids_trusted is not False:
            self.ids_trusted = False
            log.info(
                "deepgram: a Flushed came with sequence_id %r where Herald counted %s: the server "
                "does not number Flushes as expected, so a socket is replaced after each "
                "interruption",
                event.sequence_id,
                expected if expected is not None else f"one of {abandoned}",
            )
        elif ledger.confirmed and self.ids_trusted is None:
            self.ids_trusted = True
        if verdict is Verdict.STALE:
            log.debug("deepgram: ignored the Flushed of an interrupted announcement: %s", event)
        elif verdict is Verdict.UNSURE:
            unsure = Failure(
                FailureKind.TRANSIENT,
                f"a Flushed (sequence_id {event.sequence_id!r}) could be this announcement's "
                "or an interrupted one's",
            )
            raise SocketFailed(unsure)
        return verdict

    async def _within(self, budget: SlidingBudget, count: int) -> None:
        """Wait until the server's limit allows `count` more, then count them."""
        delay = budget.delay(count, self._clock())
        if delay > 0:
            log.info("deepgram: holding text back %.1f s to stay within the server's limits", delay)
            await asyncio.sleep(delay)
        budget.spend(count, self._clock())

    async def _interrupt(self, live: LiveSocket) -> None:
        """Stop the server's synthesis and swallow its stale audio and messages, so none reaches
        a speaker or ends the next announcement; or retire the socket when that is not sure."""
        assert self.keeper is not None
        ledger = _ledger(live)
        ledger.clear()
        try:
            await live.connection.send(clear(self._cfg.clear_message))
            if self._cfg.clear_message == "Reset":  # the old spec acknowledges nothing
                self.keeper.retire(live, "Reset sends no acknowledgement")
                return
            async with asyncio.timeout(self._cfg.clear_timeout_s):
                while not isinstance(event := decode(await live.connection.recv()), Cleared):
                    if isinstance(event, Flushed):  # the cut Flush, answered before Cleared
                        self._whose(ledger, event)  # never UNSURE: no Flush is waited on
                    elif not isinstance(event, Audio):  # audio before Cleared is stale
                        _note(event)
        except (TimeoutError, ConnectionClosed):
            self.keeper.retire(live, "no Cleared after Clear")
            return
        if ledger.abandoned and self.ids_trusted is not True:
            # Its Flushed may still come, and without numbers Herald could not tell it from
            # the next announcement's.
            self.keeper.retire(live, "the Flushed of the cut text may still come")

    async def check(self) -> str:
        """Open a socket and speak a few words; report the model and the time to first audio."""
        if self.keeper is None:
            raise VoiceError(NO_KEY)
        timing = await cold_check(self.keeper, self.stream, self._output_rate, self._clock)
        return f"model '{self._cfg.model}', {timing}"


def _ledger(live: LiveSocket) -> FlushLedger:
    if not isinstance(live.engine_state, FlushLedger):
        live.engine_state = FlushLedger()
    return live.engine_state


def _note(event: ServerEvent) -> None:
    if isinstance(event, Warning):
        log.warning("deepgram: server warning %s: %s", event.code, event.description)
    elif isinstance(event, Error):
        log.error("deepgram: server error %s: %s", event.code, event.description)
    else:
        log.debug("deepgram: %s", event)
