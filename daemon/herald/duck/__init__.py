"""Ducking: the music on the same speaker is lowered while Herald speaks, and put back exactly.

`Ducker` decides when: it lowers every configured player before Herald's first sound (the chime
included) and puts them back once the last sound of the last announcement has played out and
nothing followed within RESTORE_AFTER_S; announcements that follow or preempt each other keep
the music down and restore it once. Each backend knows how (`pulse.py`: the other streams of
the PulseAudio / PipeWire server; `mpd.py`: an MPD; `snapcast.py`: this room's Snapcast
client): what it lowered comes back as a `Lowered` (the value before and the value it set),
and it restores a player only if it still has the value it set (a user who changed the volume
meanwhile keeps their value).

What is lowered is kept in `state_dir/ducked.json` until it is restored (each player noted
before it is changed), so a crash while the music is down is put right at the next start; a
player that cannot be reached when it should be put back stays noted and is tried again. A
backend that cannot be reached is logged once (until it works again) and never keeps Herald
from speaking: the first sound waits for the lowering at most `ramp_ms` and WAIT_GRACE_S more,
and not at all for a backend that failed. Every call to a backend has a time limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from herald.announcement import PRIORITY_LEVELS
from herald.config import Config, host_and_port, read_secret
from herald.logsafe import shown
from herald.statefile import StateFile

log = logging.getLogger(__name__)

RESTORE_AFTER_S = 0.5  # the next announcement of a queue starts within this: no bounce between
WAIT_GRACE_S = 1.0  # the first sound waits for the lowering at most ramp_ms plus this
BACKEND_TIMEOUT_S = 5.0  # a lowering or restoring that takes the ramp and this more has hung
RETRY_RESTORE_S = 30.0  # a player that could not be put back is tried again this often
MAX_FILE_BYTES = 64 * 1024
MAX_ITEMS = 256


class DuckError(Exception):
    """A backend cannot lower or restore now; the message says why, on one line."""


class Lowered(dict[str, Any]):
    """One thing a backend changed (a stream, a player): JSON-able, its own keys (what it
    was, what Herald set) plus "backend"."""


Note = Callable[[Lowered], None]


class Backend(Protocol):
    name: str

    async def lower(self, level_db: float, ramp_s: float, note: Note) -> None:
        """Lower the player(s) by `level_db`, ramped over `ramp_s`. Each is noted *before* it
        is changed (so a failure or a crash halfway still knows what to put back); its "set"
        may be updated afterwards to what the player reports."""
        ...

    async def pause(self, note: Note) -> None:
        """Pause (or mute) the player(s) at once, for the most urgent announcements; each
        noted first, with kind "pause"."""
        ...

    async def restore(self, item: Lowered, ramp_s: float) -> None:
        """Put back one thing `lower` or `pause` noted, unless the user changed it meanwhile
        or it is gone. Raises DuckError when the player cannot be reached now."""
        ...


class Ducker:
    """When to lower and restore, for every backend at once; see the module's text."""

    def __init__(
        self,
        backends: Sequence[Backend],
        level_db: float,
        ramp_ms: int,
        state: Path | None,
        pause_from: int | None = None,
    ) -> None:
        """`pause_from`: announcements of this priority or above pause (mute) the players
        instead of lowering them (None: never)."""
        self._backends = {b.name: b for b in backends}
        self._pause_from = pause_from
        self._level_db = level_db
        self._ramp_s = ramp_ms / 1000
        self._file = None if state is None else StateFile(state, "what the ducking lowered")
        self._state = state
        self._lowered: list[Lowered] = []  # in the order they were changed
        self.down = False
        self.paused = False
        self._lowering: list[asyncio.Event] = []  # set as each backend's lowering ends
        self._restore_later: asyncio.TimerHandle | None = None
        self._working: asyncio.Task[None] | None = None  # the last lowering or restoring
        self._failing: set[str] = set()

    async def duck(self, priority: int = 0) -> None:
        """Before a sound: the music goes down (or pauses, from `pause_from` up). Waited for at
        most the ramp and WAIT_GRACE_S (a lowering already under way too), and not at all for
        a backend that failed last time (it is tried all the same)."""
        self._cancel_restore()
        pause = self._pause_from is not None and priority >= self._pause_from
        if self._backends and not (self.down and (self.paused or not pause)):
            # (a pausing one that cuts in while the music is only lowered pauses it)
            self.down = True
            self.paused = self.paused or pause
            lowering = {name: asyncio.Event() for name in self._backends}
            self._lowering = [e for n, e in lowering.items() if n not in self._failing]
            self._in_turn(self._lower(lowering, pause))
        if pending := [event for event in self._lowering if not event.is_set()]:
            waits = [asyncio.create_task(event.wait()) for event in pending]
            try:
                await asyncio.wait(waits, timeout=self._ramp_s + WAIT_GRACE_S)
            finally:
                for task in waits:
                    task.cancel()

    def idle(self) -> None:
        """The last sound has played out: the music comes back unless another sound follows."""
        if self.down and self._restore_later is None:
            loop = asyncio.get_running_loop()
            self._restore_later = loop.call_later(RESTORE_AFTER_S, self._restore_now)

    async def recover(self) -> None:
        """At start: put back what a crash (or a player that could not be reached) left."""
        self._lowered = self._load()
        if self._lowered:
            log.info("ducking: putting back what was lowered when Herald last stopped")
            await self._in_turn(self._restore_all())
        else:
            self._save()  # (a file with nothing usable in it goes)

    async def close(self) -> None:
        """Herald stops: the music comes back now (each backend given its time, no more)."""
        self._cancel_restore()
        if self.down or self._lowered:
            self._restore_now()
        if self._working is not None:
            await asyncio.wait([self._working])

    def _cancel_restore(self) -> None:
        if self._restore_later is not None:
            self._restore_later.cancel()
            self._restore_later = None

    def _restore_now(self) -> None:
        self._restore_later = None
        self.down = self.paused = False
        self._in_turn(self._restore_all())

    def _in_turn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run after whatever ran before (a restore never overtakes its lowering)."""
        previous = self._working

        async def after() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await work

        self._working = asyncio.create_task(after(), name="ducking")
        return self._working

    # --- lowering ---------------------------------------------------------------------------

    async def _lower(self, lowering: dict[str, asyncio.Event], pause: bool) -> None:
        await asyncio.gather(
            *(self._lower_one(b, lowering[b.name], pause) for b in self._backends.values())
        )
        self._save()  # (with the values the players reported)

    async def _lower_one(self, backend: Backend, done: asyncio.Event, pause: bool) -> None:
        def note(item: Lowered) -> None:
            item["backend"] = backend.name
            self._lowered.append(item)
            self._save()

        what = "pause" if pause else "lower"
        try:
            async with asyncio.timeout(self._ramp_s + BACKEND_TIMEOUT_S):
                if pause:
                    await backend.pause(note)
                else:
                    await backend.lower(self._level_db, self._ramp_s, note)
        except Exception as exc:  # a player's reply Herald did not expect, too
            self._failed(backend.name, f"cannot {what}: {_why(exc)}")
        else:
            self._worked(backend.name)
        finally:
            done.set()

    # --- restoring ---------------------------------------------------------------------------

    async def _restore_all(self) -> None:
        """Put back everything noted, the last changed first; what cannot be put back now
        stays noted (and on disk) and is tried again RETRY_RESTORE_S later."""
        by_backend: dict[str, list[Lowered]] = {}
        for item in reversed(self._lowered):
            by_backend.setdefault(str(item.get("backend")), []).append(item)
        kept = await asyncio.gather(*(self._restore_some(n, i) for n, i in by_backend.items()))
        still = {id(item) for items in kept for item in items}
        self._lowered = [item for item in self._lowered if id(item) in still]
        self._save()
        if self._lowered and not self.down:
            loop = asyncio.get_running_loop()
            self._restore_later = loop.call_later(RETRY_RESTORE_S, self._restore_now)

    async def _restore_some(self, name: str, items: list[Lowered]) -> list[Lowered]:
        """Put back one backend's items in turn; those it cannot reach now."""
        backend = self._backends.get(name)
        if backend is None:
            log.warning("ducking: %s is no longer configured; not put back", shown(name, 40))
            return []
        for n, item in enumerate(items):
            try:
                async with asyncio.timeout(self._ramp_s + BACKEND_TIMEOUT_S):
                    await backend.restore(item, self._ramp_s)
            except (DuckError, TimeoutError) as exc:
                self._failed(name, f"cannot restore: {_why(exc)}")
                return items[n:]  # (in the order they were changed, reversed: kept as is)
            except Exception as exc:  # an item it cannot read: it will never be put back
                self._failed(name, f"cannot restore: {_why(exc)}")
        self._worked(name)
        return []

    # --- telling -------------------------------------------------------------------------------

    def _failed(self, name: str, why: str) -> None:
        if name not in self._failing:
            log.warning("ducking: %s %s (said once until it works again)", name, why)
            self._failing.add(name)

    def _worked(self, name: str) -> None:
        if name in self._failing:
            log.info("ducking: %s works again", name)
            self._failing.discard(name)

    # --- what is lowered, on disk ---------------------------------------------------------------

    def _save(self) -> None:
        if self._file is None or self._state is None:
            return
        if self._lowered:
            self._file.write({"lowered": list(self._lowered)})
        else:
            try:
                self._state.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("ducking: cannot remove %s: %s", self._state, exc.strerror or exc)

    def _load(self) -> list[Lowered]:
        if self._state is None:
            return []
        try:
            with self._state.open("rb") as file:
                data = json.loads(file.read(MAX_FILE_BYTES))
            items = data["lowered"]
            return [
                Lowered(item)
                for item in items[:MAX_ITEMS]
                if isinstance(item, dict) and isinstance(item.get("backend"), str)
            ]
        except FileNotFoundError:
            return []
        except Exception as exc:  # a damaged file: nothing to put back that can be trusted
            log.warning("ducking: ignoring %s (%s)", self._state, shown(str(exc), 100))
            return []


def _why(exc: BaseException) -> str:
    if isinstance(exc, DuckError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return shown(f"{type(exc).__name__}: {exc}", 160)


def build_ducker(config: Config) -> Ducker:
    """The ducking the config asks for (a Ducker with no backend does nothing)."""
    cfg = config.ducking
    backends: list[Backend] = []
    if cfg.enabled and cfg.pulse:
        from herald.duck.pulse import PulseDucking

        backends.append(PulseDucking(cfg.pulse_server))
    if cfg.enabled and cfg.mpd:
        from herald.duck.mpd import MpdDucking

        password = read_secret(cfg.mpd_password_file, "MPD_PASSWORD", "mpd_password")
        backends.append(MpdDucking(*host_and_port(cfg.mpd, 6600), password))
    if cfg.enabled and cfg.snapcast:
        from herald.duck.snapcast import SnapcastDucking

        backends.append(SnapcastDucking(*host_and_port(cfg.snapcast, 1705), cfg.snapcast_client))
    pause_from = None if not cfg.pause_from else PRIORITY_LEVELS[cfg.pause_from]
    state = config.state_dir / "ducked.json"
    return Ducker(backends, cfg.level_db, cfg.ramp_ms, state, pause_from)
