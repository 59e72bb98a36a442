"""Herald's one entity on the ESPHome API: a media player that takes announcements.

What Home Assistant sees: its static description (feature flags with announcements, the formats
Herald wants so Home Assistant's proxy converts anything to them; no name of its own, as
ESPHome's convention is for a device's main entity: Home Assistant then names it after the
device), and its state: playing while Herald speaks an announcement (from any source) or plays
media, idle otherwise, with Herald's default volume and the mute. Every change of any of them is
a state message of its own.

Herald knows an announcement from media (ANNOUNCING, PLAYING), but sends both as PLAYING, as
ESPHome's own firmware does: Home Assistant (2026.2) has no announcing state, and its ESPHome
integration fails on the value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aioesphomeapi.api_pb2 import (  # type: ignore[attr-defined]
    ListEntitiesMediaPlayerResponse,
    MediaPlayerCommandRequest,
    MediaPlayerStateResponse,
    MediaPlayerSupportedFormat,
)
from aioesphomeapi.model import (
    MediaPlayerCommand,
    MediaPlayerEntityFeature,
    MediaPlayerFormatPurpose,
    MediaPlayerState,
)

from herald.events import Event

FEATURES = (
    MediaPlayerEntityFeature.PLAY_MEDIA
    | MediaPlayerEntityFeature.MEDIA_ANNOUNCE
    | MediaPlayerEntityFeature.STOP
    | MediaPlayerEntityFeature.VOLUME_SET
    | MediaPlayerEntityFeature.VOLUME_MUTE
)
_ON_THE_WIRE = {MediaPlayerState.ANNOUNCING: MediaPlayerState.PLAYING}
# What ends the speaking of an announcement (a preempted one may be spoken again later).
STOPS_SPEAKING = ("finished", "failed", "expired", "dropped", "preempted")


class PlayerActions(Protocol):
    """What the media player's commands do in Herald."""

    def play(self, url: str, announce: bool) -> str | None:
        """Queue the media; its announcement id (None: refused, with an event)."""

    def stop(self) -> None: ...

    def set_volume(self, volume: float) -> None: ...

    def volume(self) -> float: ...

    def set_muted(self, muted: bool) -> None: ...

    def muted(self) -> bool: ...


@dataclass
class _Now:
    state: MediaPlayerState = MediaPlayerState.IDLE
    speaking: str | None = None  # the id of the announcement being spoken


def entity_key(object_id: str) -> int:
    """A stable 32-bit key for the entity (ESPHome derives its keys from names too)."""
    return int.from_bytes(hashlib.blake2b(object_id.encode(), digest_size=4).digest(), "big")


class MediaPlayer:
    def __init__(
        self,
        name: str,
        object_id: str,
        sample_rate: int,
        actions: PlayerActions,
        changed: Callable[[], None],
    ) -> None:
        self.name = name
        self.object_id = object_id
        self.key = entity_key(object_id)
        self._rate = sample_rate
        self._actions = actions
        self._changed = changed  # a state message goes out to every subscriber
        self._now = _Now()
        self._media_ids: set[str] = set()  # what was sent without the announce flag

    def description(self) -> ListEntitiesMediaPlayerResponse:
        formats = [
            MediaPlayerSupportedFormat(
                format="wav",
                sample_rate=self._rate,
                num_channels=1,
                purpose=purpose,
                sample_bytes=2,
            )
            for purpose in (MediaPlayerFormatPurpose.DEFAULT, MediaPlayerFormatPurpose.ANNOUNCEMENT)
        ]
        return ListEntitiesMediaPlayerResponse(
            object_id=self.object_id,
            key=self.key,
            name="",  # the device's main entity: Home Assistant names it after the device
            icon="mdi:bullhorn",
            supports_pause=False,
            supported_formats=formats,
            feature_flags=FEATURES,
        )

    def state_message(self) -> MediaPlayerStateResponse:
        state = _ON_THE_WIRE.get(self._now.state, self._now.state)
        return MediaPlayerStateResponse(
            key=self.key, state=state, volume=self._actions.volume(), muted=self._actions.muted()
        )

    @property
    def state(self) -> MediaPlayerState:
        """What Herald is doing, as it knows it (ANNOUNCING included)."""
        return self._now.state

    def command(self, request: MediaPlayerCommandRequest) -> str | None:
        """Carry out a command; a one-line reason if it was not understood."""
        if request.key != self.key:
            return f"no entity with key {request.key}"
        if request.has_media_url:
            announce = bool(request.has_announcement and request.announcement)
            ident = self._actions.play(request.media_url, announce)
            if ident is not None and not announce:
                self._media_ids.add(ident)
            return None
        if request.has_volume:
            self._set_volume(request.volume)
            return None
        if request.has_command:
            return self._simple_command(request.command)
        return "a command with nothing to do"

    def _simple_command(self, command: int) -> str | None:
        if command == MediaPlayerCommand.STOP:
            self._actions.stop()
        elif command in (MediaPlayerCommand.MUTE, MediaPlayerCommand.UNMUTE):
            self._mute(command == MediaPlayerCommand.MUTE)
        else:
            return f"command {command} is not supported (stop, mute, unmute, volume, media)"
        return None

    def _set_volume(self, volume: float) -> None:
        if not 0.0 <= volume <= 1.0:  # also NaN
            volume = min(max(volume, 0.0), 1.0) if volume == volume else 1.0
        self._actions.set_volume(volume)  # muted or not: the level for when it is not
        self._changed()

    def _mute(self, mute: bool) -> None:
        if mute != self._actions.muted():
            self._actions.set_muted(mute)
            self._changed()

    def note(self, event: Event) -> None:
        """An event of Herald's: the state follows what it speaks."""
        ident = event.announcement_id
        if event.kind == "started" and ident is not None:
            self._now.speaking = ident
            playing = ident in self._media_ids
            self._set_state(MediaPlayerState.PLAYING if playing else MediaPlayerState.ANNOUNCING)
        elif event.kind in STOPS_SPEAKING and ident is not None and ident == self._now.speaking:
            self._now.speaking = None
            self._set_state(MediaPlayerState.IDLE)
        if event.settles and ident is not None:
            self._media_ids.discard(ident)

    def volume_changed(self) -> None:
        """Herald's volume was set elsewhere (MQTT): Home Assistant is told."""
        self._changed()

    def _set_state(self, state: MediaPlayerState) -> None:
        if state != self._now.state:
            self._now.state = state
            self._changed()
