"""The status Herald publishes (retained JSON): what it is doing, for people and Home Assistant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from herald.controls import Controls
from herald.dispatcher import Dispatcher
from herald.events import Event
from herald.voice.base import Voice


class StatusBoard:
    """Follows the events and the controls; publishes a fresh snapshot after each change.

    Several changes in one turn of the event loop give one publication, not several.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        voices: Sequence[Voice],
        controls: Controls,
        publish: Callable[[str], None],
    ) -> None:
        self._dispatcher = dispatcher
        dispatcher.when_idle = self.changed
        self._voices = voices
        self._controls = controls
        self._publish = publish
        self._voice = voices[0].name
        self._degraded = False
        self._texts: dict[str, str] = {}
        self._last: dict[str, Any] | None = None
        self._audio_problem: str | None = None  # why the audio device cannot be used
        self._scheduled = False

    def note(self, event: Event) -> None:
        current = self._dispatcher.current
        if event.kind == "started" and current is not None:
            self._texts = {current.id: current.text}
            self._voice = str(event.details.get("voice", self._voice))
            self._degraded = bool(event.details.get("degraded", False))
        if event.settles and event.announcement_id is not None:
            self._last = {
                "id": event.announcement_id,
                "event": event.kind,
                "ts": event.ts,
                "text": self._texts.get(event.announcement_id, ""),
            }
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
            state = "idle"
        else:
            state = "speaking" if self._audio_problem is None else "waiting for audio"
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
