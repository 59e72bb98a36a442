"""What can be changed while Herald runs (volume, quiet mode), remembered across restarts.

A slider in Home Assistant sends a value for every step it passes, and anyone on the broker can
send thousands: the file is written at most once every SAVE_INTERVAL_S (an SD card wears, and
each write blocks the event loop), always with the latest values, and once more at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from herald.statefile import StateFile

log = logging.getLogger(__name__)

SAVE_INTERVAL_S = 1.0


@dataclass
class Controls:
    volume: float
    quiet: bool = False
    muted: bool = False  # Home Assistant's media player: silent, the volume kept as it was

    @classmethod
    def load(cls, path: Path, default_volume: float) -> Controls:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(float(data["volume"]), bool(data["quiet"]), bool(data.get("muted", False)))
        except FileNotFoundError:
            return cls(default_volume)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("controls: ignoring %s: %s", path, exc)
            return cls(default_volume)
        except OSError as exc:
            log.warning("controls: cannot read %s: %s", path, exc.strerror or exc)
            return cls(default_volume)

    def save(self, file: StateFile) -> None:
        file.write(asdict(self))


class ControlsFile:
    """Saves the controls at most once every SAVE_INTERVAL_S, the latest values last."""

    def __init__(self, controls: Controls, path: Path) -> None:
        self._controls = controls
        self._file = StateFile(path, "the volume and quiet mode")
        self._saved_at = float("-inf")
        self._due: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        """The controls changed: save now, or at the end of the interval if one just went."""
        if self._due is not None:
            return  # a save is due already, and will write the latest values
        wait = self._saved_at + SAVE_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._save()
        else:
            self._due = asyncio.get_running_loop().call_later(wait, self._save)

    def flush(self) -> None:
        """Write a save that is due, now (at the end of the run)."""
        if self._due is not None:
            self._due.cancel()
            self._save()

    def _save(self) -> None:
        self._due = None
        self._saved_at = time.monotonic()
        self._controls.save(self._file)


class ControlPanel:
    """The controls as Herald runs: set from MQTT or Home Assistant's media player; each change
    is saved (ControlsFile), logged, and told to whoever follows the controls (the status, the
    media player's volume)."""

    def __init__(self, controls: Controls, path: Path) -> None:
        self.controls = controls
        self._file = ControlsFile(controls, path)
        self._followers: list[Callable[[], None]] = []

    def follow(self, changed: Callable[[], None]) -> None:
        self._followers.append(changed)

    def set_volume(self, volume: float) -> None:
        """The default volume (clamped to 0-1)."""
        self.controls.volume = min(max(volume, 0.0), 1.0)
        self._changed()

    def set_quiet(self, quiet: bool) -> None:
        self.controls.quiet = quiet
        self._changed()

    def set_muted(self, muted: bool) -> None:
        """Muted (Home Assistant's media player): silent until unmuted, the volume kept."""
        self.controls.muted = muted
        self._changed()

    def live_volume(self) -> float:
        """The volume announcements without a volume of their own are spoken at."""
        return 0.0 if self.controls.muted else self.controls.volume

    def _changed(self) -> None:
        self._file.changed()
        controls = self.controls
        muted = ", muted" if controls.muted else ""
        log.info("volume %.2f%s, quiet mode %s", controls.volume, muted, controls.quiet)
        for changed in self._followers:
            changed()

    def close(self) -> None:
        """At the end of a run: a change still waiting to be saved is saved now."""
        self._file.flush()
