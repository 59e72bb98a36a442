"""What Herald is doing: one status, shown two ways.

The same `Status` gives the retained JSON on `<base>/<node>/status` (for Home Assistant and
scripts) and the line a person reads in `systemctl status` (systemd's STATUS=).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herald.statefile import StateFile

if TYPE_CHECKING:
    from herald.controls import Controls
    from herald.events import Event
    from herald.scheduler import Scheduler
    from herald.voice.base import Voice

log = logging.getLogger(__name__)

IDLE = "idle"
SPEAKING = "speaking"
WAITING_FOR_AUDIO = "waiting_for_audio"  # an announcement is due, the audio device is missing
STATES = (IDLE, SPEAKING, WAITING_FOR_AUDIO)
"""Every `state` the status can have: Home Assistant's State sensor offers exactly these."""


@dataclass(frozen=True)
class Status:
    """What Herald is doing at one moment."""

    state: str  # one of STATES
    current: tuple[str, str] | None  # (id, priority name) of the one speaking or due
    queue_length: int
    voice: str  # the voice that spoke last (or the first one)
    degraded: bool  # ... and it was a fallback
    voices: tuple[str, ...]  # each voice in a few words ("deepgram warm (age 12 min)")
    volume: float
    quiet: bool  # quiet hours or quiet mode hold the less urgent ones now
    last: dict[str, Any] | None  # the last announcement's fate: id, event, ts, text
    audio: str | None  # why the audio device cannot be used, while it cannot

    def to_json(self) -> str:
        """The retained status message."""
        current = self.current
        return json.dumps(
            {
                "state": self.state,
                "current": None if current is None else {"id": current[0], "priority": current[1]},
                "queue_length": self.queue_length,
                "voice": self.voice,
                "degraded": self.degraded,
                "voice_status": ", ".join(self.voices),
                "volume": self.volume,
                "quiet": self.quiet,
                "last": self.last,
                "audio": self.audio,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    def line(self) -> str:
        """What a person reads in `systemctl status`: state · each voice · queue length, and
        why the audio device cannot be used, while it cannot."""
        if self.current is None:
            state = "idle"
        elif self.state == WAITING_FOR_AUDIO:
            state = f"{self.current[0]} ({self.current[1]}) waits for the audio device"
        else:
            state = f"speaking {self.current[0]} ({self.current[1]})"
        parts = [state, *self.voices, f"queue {self.queue_length}"]
        if self.audio is not None:
            parts.append(self.audio)
        return " · ".join(parts)


class StatusBoard:
    """Follows the events, the queue and the controls; publishes a fresh status after each
    change.

    Several changes in one turn of the event loop give one publication, not several, and at
    most one write of the last announcement to the disk (an SD card).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        voices: Sequence[Voice],
        controls: Controls,
        publish: Callable[[str], None],
        last_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        device_problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`publish`: sends the retained status; `last_path`: where the last announcement is
        kept, so a restart still shows it; `device_problem`: what the audio output itself last
        found wrong with the device (None once it opens), shown when nothing was reported."""
        self._scheduler = scheduler
        self._device_problem = device_problem
        self._clock = clock
        self._voices = voices
        self._controls = controls
        self._publish = publish
        self._voice = voices[0].name
        self._degraded = False
        self._last_file = StateFile(last_path, "the last announcement") if last_path else None
        self._last: dict[str, Any] | None = load_last(last_path)
        self._last_unsaved = False
        self._audio_problem: str | None = None  # why the audio device cannot be used
        self._scheduled = False

    def note(self, event: Event) -> None:
        if event.kind == "started":
            self._voice = str(event.details.get("voice", self._voice))
            self._degraded = bool(event.details.get("degraded", False))
        if event.settles and event.announcement_id is not None:
            self._last = {
                "id": event.announcement_id,
                "event": event.kind,
                "ts": event.ts,
                "text": event.text,
            }
            self._last_unsaved = True
        self.changed()

    def audio(self, problem: str | None) -> None:
        """The audio device stopped working (why), or works again (None)."""
        if problem != self._audio_problem:
            self._audio_problem = problem
            self.changed()

    def changed(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def now(self) -> Status:
        current = self._scheduler.current
        audio = self._audio_problem
        if audio is None:  # e.g. the device failed while idle (the keep-awake tone)
            audio = self._device_problem()
        if current is None:
            state = IDLE
        elif audio is None:
            state = SPEAKING
        else:
            state = WAITING_FOR_AUDIO
        return Status(
            state=state,
            current=None if current is None else (current.id, current.priority_name),
            queue_length=len(self._scheduler),
            voice=self._voice,
            degraded=self._degraded,
            voices=tuple(voice.describe() for voice in self._voices),
            volume=self._controls.volume,
            quiet=self._scheduler.quiet_now(self._clock()),
            last=self._last,
            audio=audio,
        )

    def line(self) -> str:
        """The status as systemd shows it."""
        return self.now().line()

    def _send(self) -> None:
        self._scheduled = False
        self._publish(self.now().to_json())
        if self._last_unsaved and self._last is not None and self._last_file is not None:
            self._last_file.write(self._last)  # one write for a burst of fates
            self._last_unsaved = False


def load_last(path: Path | None) -> dict[str, Any] | None:
    """The last announcement a previous run kept; None when there is none (or it is unusable)."""
    if path is None:
        return None
    try:
        last = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("status: ignoring %s: %s", path, exc)
        return None
    if not isinstance(last, dict) or set(last) != {"id", "event", "ts", "text"}:
        log.warning("status: ignoring %s: not a last announcement", path)
        return None
    return last
