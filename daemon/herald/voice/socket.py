"""The warm-socket keeper: one WebSocket per engine, open before it is needed, never cold.

It connects at start-up, lets WebSocket pings keep the socket alive (an application message
only when the engine asks for one while idle; Deepgram's server closes a socket for one),
replaces it before the server's age limit (a new socket is open before the old one is closed,
and never while an announcement is using it), and after any close or failure reconnects in the
background with capped, jittered exponential backoff, so the next announcement finds a socket
ready. Each engine brings its own protocol: how to classify a close code or a refused handshake,
what to send before closing, and optionally a session to start on each new socket
(`after_open`) and an application keepalive while the socket is idle (`idle_upkeep`).

A close for idleness (the engine classifies it as FailureKind.IDLE, or with `idle_normal_close`
a normal close of a socket nobody was using) is not a failure: the keeper opens a new socket at
once, without backoff, and learns how long an unused socket lives (`idle_life_s`); from then on
it replaces an unused socket before that age, new one first, so no announcement waits for a
handshake because of it.

What every socket voice does with the socket (lease it for one utterance, replay, interrupt)
is in streaming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from herald.voice.base import VoiceError
from herald.voice.protocol import Failure, FailureKind

log = logging.getLogger(__name__)

# websockets logs request headers at DEBUG, and a header carries the API key: keep it quieter.
logging.getLogger("websockets").setLevel(logging.INFO)

PERSON_NEEDED_RETRY_S = 300.0  # a wrong key or setting will not fix itself: try every 5 minutes
# A socket that lived this long, or on which the server spoke, was a success: after it closes,
# the backoff starts over (a fresh incident, not one more failure in a row).
STABLE_AFTER_S = 30.0
NORMAL_CLOSE = 1000
# An "idle" close less than this after the client last spoke is no idle timeout but a server that
# drops every socket: it is a failure (backoff), so Herald never reconnects in a tight loop.
IDLE_CLOSE_MIN_S = 1.0
# Once the idle lifetime is known, an unused socket is replaced this much before it: a fifth of
# the lifetime, or three handshakes if that is more, but never sooner than half the lifetime.
IDLE_MARGIN_FRACTION = 0.2
IDLE_MARGIN_HANDSHAKES = 3.0


class SessionRefused(Exception):
    """Raised by `after_open`: the socket opened, but the server refused the session on it."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


_DIAL_ERRORS = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, SessionRefused)


class Backoff:
    """Capped exponential delays with jitter; `reset()` after a success. Pure but for random."""

    def __init__(self, first_s: float = 0.25, cap_s: float = 30.0, factor: float = 2.0) -> None:
        self.first_s, self.cap_s, self.factor = first_s, cap_s, factor
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.first_s * self.factor**self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not cryptography)

    def reset(self) -> None:
        self._attempt = 0


@dataclass(frozen=True)
class SocketSpec:
    """What the keeper needs to know of one engine's socket."""

    name: str
    url: str
    headers: dict[str, str] = field(repr=False)  # carries the key: never logged
    max_age_s: float
    classify_close: Callable[[int | None, str], Failure]
    classify_handshake: Callable[[int, str | None], Failure]
    error_header: str | None = None  # the response header that names a handshake error
    goodbye: str | None = None  # sent before closing a socket Herald retires
    ping_interval_s: float = 20.0
    open_timeout_s: float = 10.0
    after_open: Callable[[ClientConnection], Awaitable[None]] | None = None  # e.g. init/ready
    # Called (with no announcement using the socket) after every `idle_upkeep_s` of idleness.
    idle_upkeep: Callable[[ClientConnection], Awaitable[None]] | None = None
    idle_upkeep_s: float = 20.0
    # Some servers close a socket normally (1000) after each utterance: then a socket that has
    # served one is replaced at once, without the backoff a failure earns.
    reconnect_after_normal_close: bool = False
    # A normal close (1000) of a socket no announcement is using is a close for idleness.
    idle_normal_close: bool = False


@dataclass
class LiveSocket:
    connection: ClientConnection
    opened_at: float
    number: int
    used: bool = False  # an announcement has leased it
    spoke: bool = False  # the server sent audio on it: it works
    engine_state: object = None  # the engine's own bookkeeping for this socket

    def age(self, now: float) -> float:
        return now - self.opened_at


class SocketKeeper:
    def __init__(self, spec: SocketSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._backoff = Backoff()
        self._live: LiveSocket | None = None
        self._ready = asyncio.Event()  # set while a socket is open and usable
        self._idle = asyncio.Event()  # set while no announcement holds the socket
        self._idle.set()
        self._idle_since = clock()  # when the last lease ended (or the socket opened)
        self._quiet_since = clock()  # when the last lease began: the client spoke last then
        self._handshake_s = 0.0  # how long the last successful dial took
        self._lease_lock = asyncio.Lock()
        self._retire_requested = asyncio.Event()
        self._dialing = False
        self._unreachable = False  # the last attempt to connect failed: do not make anyone wait
        self._dial_ended = asyncio.Event()  # set, then replaced, each time an attempt ends
        self._closing: set[asyncio.Task[None]] = set()
        self.last_failure: Failure | None = None
        self.opened = 0  # sockets opened so far (tests and the benchmark read it)
        # How long the server lets a socket sit unused, learned from its idle closes (None: it
        # has not closed one yet).
        self.idle_life_s: float | None = None
        # A normal close proves less than NET-0001: it teaches the lifetime only when a second
        # one confirms the first (the longer of the two counts). The first one's unused time:
        self._normal_idle_s: float | None = None

    # --- for the engine ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, wait_s: float) -> AsyncIterator[LiveSocket]:
        """The open socket, for one announcement at a time; raises VoiceError when none is."""
        live = await self._locked_socket(wait_s)
        live.used = True
        self._idle.clear()
        self._quiet_since = self._clock()
        try:
            yield live
        finally:
            self._idle.set()
            self._idle_since = self._clock()
            self._lease_lock.release()

    async def _locked_socket(self, wait_s: float) -> LiveSocket:
        """The open socket, with the lease lock held. It waits for a socket without the lock,
        so a rotation can install the socket it waits for; if the socket was retired while it
        waited for the lock, it waits again for the next one."""
        while True:
            await self._usable_socket(wait_s)
            await self._lease_lock.acquire()
            if self._ready.is_set() and self._live is not None:
                return self._live
            self._lease_lock.release()

    def retire(self, live: LiveSocket, why: str) -> None:
        """The engine found this socket unusable: replace it now."""
        if live is self._live:
            log.info("%s: retiring socket #%d: %s", self.spec.name, live.number, why)
            self._ready.clear()
            self._retire_requested.set()

    def describe(self) -> str:
        """One line for a person: how the voice's connection is doing."""
        if self._live is not None and self._ready.is_set():
            minutes = self._live.age(self._clock()) / 60
            return f"{self.spec.name} warm (age {minutes:.0f} min)"
        if self.last_failure is not None:
            return f"{self.spec.name} down: {self.last_failure}"
        return f"{self.spec.name} connecting"

    async def _usable_socket(self, wait_s: float) -> LiveSocket:
        """The open socket; waits at most `wait_s` for one, but not for a server found down:
        once an attempt to connect fails, the caller hears it at once."""
        try:
            async with asyncio.timeout(wait_s):
                while not self._ready.is_set():
                    if not self._dialing and self._unreachable:
                        raise VoiceError(f"{self.spec.name} is unavailable: {self.last_failure}")
                    await self._dial_ended.wait()
        except TimeoutError:
            problem = self.last_failure or "still connecting"
            raise VoiceError(f"{self.spec.name} has no open socket ({problem})") from None
        assert self._live is not None
        return self._live

    def _tell_waiters(self) -> None:
        self._dial_ended.set()
        self._dial_ended = asyncio.Event()

    # --- the keeper's own task --------------------------------------------------------------

    async def run(self) -> None:
        """Keep a socket open until cancelled; then close it politely."""
        try:
            while True:
                live = self._live or await self._dial_until_open()
                await self._watch(live)
        finally:
            await self._close_all()

    async def _dial_until_open(self) -> LiveSocket:
        while True:
            try:
                live = await self._dial()
            except _DIAL_ERRORS as exc:
                failure = self._classify_dial_error(exc)
                self._unreachable = True
                self.last_failure = failure
                self._tell_waiters()  # a lease waiting for this attempt gives up now
                await self._pause_after(failure, "cannot connect")
                continue
            self._install(live)
            return live

    async def _dial(self) -> LiveSocket:
        self._dialing = True
        started = self._clock()
        try:
            connection = await connect(
                self.spec.url,
                additional_headers=self.spec.headers,
                ping_interval=self.spec.ping_interval_s,
                ping_timeout=self.spec.ping_interval_s,
                open_timeout=self.spec.open_timeout_s,
                max_size=None,
                compression=None,
            )
            if self.spec.after_open is not None:
                try:
                    await self.spec.after_open(connection)
                except BaseException:
                    await connection.close()
                    raise
        finally:
            self._dialing = False
        self.opened += 1
        self._handshake_s = self._clock() - started
        return LiveSocket(connection, self._clock(), self.opened)

    def _install(self, live: LiveSocket) -> None:
        self._live = live
        self.last_failure = None
        self._unreachable = False
        self._retire_requested.clear()
        self._idle_since = self._quiet_since = self._clock()
        self._ready.set()
        self._tell_waiters()
        log.info("%s: socket #%d open", self.spec.name, live.number)

    async def _watch(self, live: LiveSocket) -> None:
        """Return once the socket is closed, retired or replaced by a fresh one."""
        rotate_in = max(self.spec.max_age_s - live.age(self._clock()), 0)
        closed = asyncio.create_task(live.connection.wait_closed())
        retired = asyncio.create_task(self._retire_requested.wait())
        helpers = {closed, retired}
        if self.spec.idle_upkeep is not None:
            helpers.add(asyncio.create_task(self._upkeep_while_idle(live)))
        unused_too_long = None
        if self.idle_life_s is not None:
            unused_too_long = asyncio.create_task(self._unused_too_long())
            helpers.add(unused_too_long)
        try:
            done, _ = await asyncio.wait(
                helpers, timeout=rotate_in, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for helper in helpers:
                helper.cancel()
        if not done or done == {unused_too_long}:
            await self._rotate(live, "age" if not done else "idle")
            return
        self._drop(live)
        if closed in done:
            await self._after_close(live)
        else:
            self._close_politely(live)

    async def _after_close(self, live: LiveSocket) -> None:
        code, reason = live.connection.close_code, live.connection.close_reason or ""
        if self.spec.reconnect_after_normal_close and code == NORMAL_CLOSE and live.used:
            self._backoff.reset()
            log.info("%s: socket #%d closed normally; replacing it", self.spec.name, live.number)
            return
        failure = self.spec.classify_close(code, reason)
        now = self._clock()
        unused = self._idle.is_set()  # no announcement holds it
        unused_for = now - self._idle_since if unused else 0.0
        # The server's idle timer runs from the client's last message, which went out when the
        # last announcement began, not when it ended: learn from then, or a long announcement
        # would teach a lifetime of a second or two (and a replacement every second after).
        silent_for = now - self._quiet_since if unused else 0.0
        idle_close = failure.kind is FailureKind.IDLE or (
            self.spec.idle_normal_close and code == NORMAL_CLOSE and unused
        )
        if idle_close and (not unused or silent_for >= IDLE_CLOSE_MIN_S):
            # The server accepted the socket and kept it until nobody used it: no failure, and
            # no backoff before the next one. (A close during an announcement replays it.)
            self._backoff.reset()
            if unused and failure.kind is FailureKind.IDLE:
                self._learn_idle_life(silent_for)
            elif unused and self._normal_idle_s is None:
                self._normal_idle_s = silent_for
            elif unused and self._normal_idle_s is not None:
                self._learn_idle_life(max(self._normal_idle_s, silent_for))
                self._normal_idle_s = silent_for
            log.info(
                "%s: socket #%d closed for idleness %s (%s); opening another now",
                self.spec.name,
                live.number,
                f"after {unused_for:.1f} s unused" if unused else "during an announcement",
                failure.detail,
            )
            return
        if live.spoke or live.age(now) >= STABLE_AFTER_S:
            self._backoff.reset()
        await self._pause_after(failure, f"socket #{live.number} closed")

    def _learn_idle_life(self, seconds: float) -> None:
        if self.idle_life_s is not None and seconds >= self.idle_life_s:
            return
        self.idle_life_s = seconds
        log.info(
            "%s: the server closes a socket left unused for %.1f s; an unused socket is now "
            "replaced after %.1f s",
            self.spec.name,
            seconds,
            self._replace_unused_after(),
        )

    def _replace_unused_after(self) -> float:
        """How long after the last announcement began an unused socket is replaced."""
        life = self.idle_life_s
        assert life is not None
        margin = max(life * IDLE_MARGIN_FRACTION, IDLE_MARGIN_HANDSHAKES * self._handshake_s)
        return max(life - margin, life / 2)

    async def _unused_too_long(self) -> None:
        """Return once the socket has gone unused so long that the server may soon close it.

        Counted from the start of the last announcement (the client's last message to the
        server went out then), as the idle life was learned."""
        while True:
            wait = self._quiet_since + self._replace_unused_after() - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            elif self._idle.is_set():
                return
            else:
                await self._idle.wait()  # then count again from that announcement's start

    async def _upkeep_while_idle(self, live: LiveSocket) -> None:
        """Run the engine's idle upkeep (a keepalive) after each `idle_upkeep_s` of idleness.

        It holds the lease lock, so no announcement uses the socket at the same time; one that
        arrives meanwhile waits for the upkeep to end (a send, or a short probe).
        """
        upkeep, every = self.spec.idle_upkeep, self.spec.idle_upkeep_s
        assert upkeep is not None
        while True:
            wait = self._idle_since + every - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._lease_lock:
                started = self._clock()
                if self._idle_since + every <= started:
                    try:
                        await upkeep(live.connection)
                    except (ConnectionClosed, OSError, TimeoutError):
                        pass  # the close is the watcher's to handle
                    except Exception:
                        log.exception("%s: idle upkeep failed", self.spec.name)
                    # The next one is due `every` after this one; it was a client message too.
                    self._idle_since = self._quiet_since = started

    async def _rotate(self, old: LiveSocket, why: str = "age") -> None:
        """Make before break: open the new socket, then hand it out, then close the old one."""
        await self._idle.wait()  # never while an announcement is using it
        try:
            fresh = await self._dial()
        except _DIAL_ERRORS as exc:
            log.warning(
                "%s: could not open a replacement for socket #%d (%s)",
                self.spec.name,
                old.number,
                self._classify_dial_error(exc),
            )
            self._drop(old)
            self._close_politely(old)
            return
        async with self._lease_lock:  # waits for an announcement that began meanwhile
            self._install(fresh)
        log.log(
            logging.INFO if why == "age" else logging.DEBUG,  # idle rotations can be frequent
            "%s: rotated socket #%d (age %.0f s, for %s) to #%d",
            self.spec.name,
            old.number,
            old.age(self._clock()),
            why,
            fresh.number,
        )
        self._close_politely(old)

    def _drop(self, live: LiveSocket) -> None:
        if self._live is live:
            self._live = None
            self._ready.clear()

    async def _pause_after(self, failure: Failure, what: str) -> None:
        self.last_failure = failure
        if failure.kind.needs_a_person:
            delay = PERSON_NEEDED_RETRY_S
            log.error("%s: %s: %s; retrying in %.0f s", self.spec.name, what, failure, delay)
        else:
            delay = self._backoff.next_delay()
            log.warning("%s: %s: %s; reconnecting in %.1f s", self.spec.name, what, failure, delay)
        await asyncio.sleep(delay)

    def _classify_dial_error(self, exc: BaseException) -> Failure:
        if isinstance(exc, SessionRefused):
            return exc.failure
        if isinstance(exc, InvalidStatus):
            header = self.spec.error_header
            detail = exc.response.headers.get(header) if header else None
            return self.spec.classify_handshake(exc.response.status_code, detail)
        if isinstance(exc, ConnectionClosed):
            return self.spec.classify_close(*close_frame(exc))
        if isinstance(exc, TimeoutError):
            return Failure(FailureKind.TRANSIENT, "the handshake timed out")
        return Failure(FailureKind.TRANSIENT, f"{type(exc).__name__}: {exc}")

    def _close_politely(self, live: LiveSocket) -> None:
        task = asyncio.create_task(self._say_goodbye(live), name=f"close-{self.spec.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _say_goodbye(self, live: LiveSocket) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            if self.spec.goodbye is not None:
                await live.connection.send(self.spec.goodbye)
            await live.connection.close()

    async def _close_all(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            self._ready.clear()
            self._close_politely(live)
        if self._closing:
            await asyncio.wait(self._closing, timeout=2)


def close_frame(exc: ConnectionClosed) -> tuple[int | None, str]:
    """The code and reason of the close frame the server sent; (None, "") when it sent none."""
    received = exc.rcvd
    return (received.code, received.reason) if received else (None, "")
