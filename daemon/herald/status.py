"""The status Herald publishes (retained JSON): what it is doing, for people and Home Assistant."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herald.statefile import StateFile

if TYPE_CHECKING:
    from herald.controls import Controls
    from herald.dispatcher import Dispatcher
    from herald.events import Event
    from herald.voice.base import Voice

log = logging.getLogger(__name__)

IDLE = "idle"
SPEAKING = "speaking"
WAITING_FOR_AUDIO = "waiting_for_audio"  # an announcement is due, the audio device is missing
STATES = (IDLE, SPEAKING, WAITING_FOR_AUDIO)
"""Every `state` the status can have: Home Assistant's State sensor offers exactly these."""


class StatusBoard:
    """Follows the events and the controls; publishes a fresh snapshot after each change.

    Several changes in one turn of the event loop give one publication, not several, and at
    most one write of the last announcement to the disk (an SD card).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        voices: Sequence[Voice],
        controls: Controls,
        publish: Callable[[str], None],
        last_path: Path | None = None,
    ) -> None:
        """last_path: where the last announcement is kept, so a restart still shows it."""
        self._dispatcher = dispatcher
        dispatcher.when_changed = self.changed
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

    def snapshot(self) -> dict[str, Any]:
        current = self._dispatcher.current
        if current is None:
            state = IDLE
        else:
            state = SPEAKING if self._audio_problem is None else WAITING_FOR_AUDIO
        return {
            "state": state,
            "current": None
            if current is None
            else {"id": current.id, "priority": current.priority_name},
            "queue_length": self._dispatcher.queue_length,
            "voice": self._voice,
            "degraded": self._degraded,
            "voice_status": ", ".join(voice.describe() for voice in self._voices),
            "volume": self._controls.volume,
            "quiet": self._dispatcher.quiet_now(),
            "last": self._last,
            "audio": self._audio_problem,
        }

    def _send(self) -> None:
        self._scheduled = False
        self._publish(json.dumps(self.snapshot(), ensure_ascii=False, separators=(",", ":")))
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
