"""Ducking: the music on the same speaker is lowered while Herald speaks, and put back exactly.

`Ducker` decides when: it lowers every configured player before Herald's first sound (the chime
included) and puts them back once the last sound of the last announcement has played out and
nothing followed within RESTORE_AFTER_S; announcements that follow or preempt each other keep
the music down and restore it once. Each backend knows how (`pulse.py`: the other streams of
the PulseAudio / PipeWire server; `mpd.py`: an MPD; `snapcast.py`: this room's Snapcast
client): what it lowered comes back as a `Lowered` (the value before and the value it set),
and it restores a player only if it still has the value it set (a user who changed the volume
meanwhile keeps their value).

What is lowered is kept in `state_dir/ducked.json` until it is restored, so a crash while the
music is down is put right at the next start. A backend that cannot be reached is logged once
(until it works again) and never keeps Herald from speaking: the first sound waits for the
lowering at most `ramp_ms` and WAIT_GRACE_S more, and not at all for a backend that failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from herald.announcement import PRIORITY_LEVELS
from herald.config import Config, read_secret
from herald.logsafe import shown
from herald.statefile import StateFile

log = logging.getLogger(__name__)

RESTORE_AFTER_S = 0.5  # the next announcement of a queue starts within this: no bounce between
WAIT_GRACE_S = 1.0  # the first sound waits for the lowering at most ramp_ms plus this


class DuckError(Exception):
    """A backend cannot lower or restore now; the message says why, on one line."""


class Lowered(dict[str, Any]):
    """What a backend lowered: JSON-able, its own keys plus "backend"."""


class Backend(Protocol):
    name: str

    async def lower(self, level_db: float, ramp_s: float) -> list[Lowered]:
        """Lower the player(s) by `level_db`, ramped over `ramp_s`; what was lowered."""
        ...

    async def pause(self) -> list[Lowered]:
        """Pause (or mute) the player(s) at once, for the most urgent announcements; what was
        paused (kind "pause")."""
        ...

    async def restore(self, lowered: Sequence[Lowered], ramp_s: float) -> None:
        """Put back what `lower` lowered and `pause` paused, unless the user changed it
        meanwhile (paused ones play again first, then the volumes come back up)."""
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
        self.paused = False
        self._level_db = level_db
        self._ramp_s = ramp_ms / 1000
        self._file = None if state is None else StateFile(state, "what the ducking lowered")
        self._state = state
        self._lowered: list[Lowered] = []
        self.down = False
        self._restore_later: asyncio.TimerHandle | None = None
        self._working: asyncio.Task[None] | None = None  # the last lowering or restoring
        self._failing: set[str] = set()

    async def duck(self, priority: int = 0) -> None:
        """Before a sound: the music goes down (or pauses, from `pause_from` up). Waited for at
        most the ramp and WAIT_GRACE_S, and not at all for a backend that failed last time (it
        is tried all the same)."""
        self._cancel_restore()
        pause = self._pause_from is not None and priority >= self._pause_from
        if not self._backends or (self.down and (self.paused or not pause)):
            return  # (a pausing one that cuts in while the music is only lowered pauses it)
        self.down = True
        self.paused = self.paused or pause
        lowering = {name: asyncio.Event() for name in self._backends if name not in self._failing}
        self._in_turn(self._lower(lowering, pause))
        if lowering:
            waits = [asyncio.create_task(done.wait()) for done in lowering.values()]
            _, late = await asyncio.wait(waits, timeout=self._ramp_s + WAIT_GRACE_S)
            for task in late:
                task.cancel()

    def idle(self) -> None:
        """The last sound has played out: the music comes back unless another sound follows."""
        if not self.down or self._restore_later is not None:
            return
        loop = asyncio.get_running_loop()
        self._restore_later = loop.call_later(RESTORE_AFTER_S, self._restore_now)

    async def recover(self) -> None:
        """At start: put back what a crash left lowered."""
        lowered = self._load()
        if lowered:
            log.info("ducking: putting back what was lowered when Herald last stopped")
            await self._in_turn(self._restore(lowered))

    async def close(self) -> None:
        """Herald stops: the music comes back now."""
        self._cancel_restore()
        if self.down:
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
        self._in_turn(self._restore_lowered())

    def _in_turn(self, work: Any) -> asyncio.Task[None]:
        """Run after whatever ran before (a restore never overtakes its lowering)."""
        previous = self._working

        async def after() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await work

        self._working = asyncio.create_task(after(), name="ducking")
        return self._working

    async def _lower(self, lowering: dict[str, asyncio.Event], pause: bool) -> None:
        results = await asyncio.gather(
            *(self._lower_one(b, lowering.get(b.name), pause) for b in self._backends.values())
        )
        self._lowered += [item for lowered in results for item in lowered]
        self._save()

    async def _lower_one(
        self, backend: Backend, done: asyncio.Event | None, pause: bool
    ) -> list[Lowered]:
        try:
            if pause:
                lowered = await backend.pause()
            else:
                lowered = await backend.lower(self._level_db, self._ramp_s)
        except DuckError as exc:
            self._failed(backend.name, f"cannot {'pause' if pause else 'lower'}: {exc}")
            return []
        finally:
            if done is not None:
                done.set()
        self._worked(backend.name)
        for item in lowered:
            item["backend"] = backend.name
        return lowered

    async def _restore_lowered(self) -> None:
        lowered, self._lowered = self._lowered, []
        await self._restore(lowered)

    async def _restore(self, lowered: Sequence[Lowered]) -> None:
        by_backend: dict[str, list[Lowered]] = {}
        for item in lowered:
            by_backend.setdefault(str(item.get("backend")), []).append(item)
        await asyncio.gather(*(self._restore_one(n, items) for n, items in by_backend.items()))
        self._save()

    async def _restore_one(self, name: str, items: list[Lowered]) -> None:
        backend = self._backends.get(name)
        if backend is None:
            log.warning("ducking: %s is no longer configured; not restored", shown(name, 40))
            return
        try:
            await backend.restore(items, self._ramp_s)
        except DuckError as exc:
            self._failed(name, f"cannot restore: {exc}")
            return
        self._worked(name)

    def _failed(self, name: str, why: str) -> None:
        if name not in self._failing:
            log.warning("ducking: %s %s (said once until it works again)", name, why)
            self._failing.add(name)

    def _worked(self, name: str) -> None:
        if name in self._failing:
            log.info("ducking: %s works again", name)
            self._failing.discard(name)

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
                data = json.loads(file.read(64 * 1024))
            return [Lowered(item) for item in data["lowered"] if isinstance(item, dict)]
        except FileNotFoundError:
            return []
        except Exception as exc:  # a damaged file: nothing to put back that can be trusted
            log.warning("ducking: ignoring %s (%s)", self._state, shown(str(exc), 100))
            return []


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
        backends.append(MpdDucking(cfg.mpd, password))
    if cfg.enabled and cfg.snapcast:
        from herald.duck.snapcast import SnapcastDucking

        backends.append(SnapcastDucking(cfg.snapcast, cfg.snapcast_client))
    pause_from = None if not cfg.pause_from else PRIORITY_LEVELS[cfg.pause_from]
    state = config.state_dir / "ducked.json"
    return Ducker(backends, cfg.level_db, cfg.ramp_ms, state, pause_from)
