"""One Herald speaker on the broker: its topics in, its events, status and discovery out.

The Node routes every message for this speaker to the Dispatcher (announcements, stop, clear),
to the Controls (volume, quiet mode), or to the Hermes bridge; and it publishes what Home
Assistant shows: the retained status, availability, and the discovery configs (again whenever
Home Assistant comes back online).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from herald import __version__
from herald.announcement import PRIORITY_LEVELS
from herald.commands import SirenCommand, parse_siren, parse_switch, parse_volume
from herald.config import Config
from herald.controls import Controls, ControlsFile
from herald.dispatcher import Dispatcher
from herald.events import Event
from herald.journal import QueueJournal
from herald.logsafe import shown
from herald.mqtt import hermes
from herald.mqtt.client import Inbound, MqttBridge
from herald.mqtt.discovery import SIREN_ID, NodeInfo, discovery_messages
from herald.mqtt.hermes import HermesBridge
from herald.mqtt.topics import Topics
from herald.rooms import Synchroniser
from herald.status import StatusBoard
from herald.sync import announcement_key
from herald.voice.base import Voice

log = logging.getLogger(__name__)


class Node:
    def __init__(
        self,
        config: Config,
        topics: Topics,
        controls: Controls,
        journal: QueueJournal | None = None,
    ) -> None:
        self.config = config
        self.topics = topics
        self.controls = controls
        self.controls_file = ControlsFile(controls, config.state_dir / "controls.json")
        self.journal = journal
        self.hermes = HermesBridge(config.hermes.site_id or config.node_id)
        self.bridge: MqttBridge | None = None
        self.dispatcher: Dispatcher | None = None
        self.status: StatusBoard | None = None
        self.synchroniser: Synchroniser | None = None
        self.volume_changed: Callable[[], None] = lambda: None  # told of a new volume

    @property
    def ha_status_topic(self) -> str:
        return f"{self.config.home_assistant.discovery_prefix}/status"

    def subscriptions(self) -> list[str]:
        extra = [self.ha_status_topic] if self.config.home_assistant.discovery else []
        if self.config.hermes.enabled:
            extra.append(hermes.SAY)
        return [*self.topics.subscriptions(), *extra]

    def attach(
        self,
        bridge: MqttBridge,
        dispatcher: Dispatcher,
        voices: Sequence[Voice],
        synchroniser: Synchroniser | None = None,
    ) -> None:
        self.bridge, self.dispatcher, self.synchroniser = bridge, dispatcher, synchroniser
        self.status = StatusBoard(
            dispatcher,
            voices,
            self.controls,
            self._publish_status,
            last_path=self.config.state_dir / "last.json",
        )

    # --- out ----------------------------------------------------------------------------------

    def audio_problem(self, problem: str | None) -> None:
        """Why the audio device cannot be used (None: it works): the status says so."""
        if self.status is not None:
            self.status.audio(problem)

    def emit(self, event: Event) -> None:
        """Publish an event, and what follows from it (status, Hermes' sayFinished).

        An event that settles an announcement's fate leaves it in the journal until the broker
        acknowledges the event: a crash a moment later sends the event again at the next start.
        """
        fields = {"ANNOUNCEMENT_ID": event.announcement_id or "", "HERALD_EVENT": event.kind}
        if "voice" in event.details:
            fields["VOICE"] = str(event.details["voice"])
        details = "".join(
            f" {key}={shown(str(value), 200)}" for key, value in event.details.items()
        )
        ident = shown(event.announcement_id) if event.announcement_id else "(no id)"
        log.info("%s %s%s", event.kind, ident, details, extra=fields)
        payload = event.to_json()
        self._send(self.topics.events, payload, on_acknowledged=self._settle(event, payload))
        if (finished := self.hermes.finished(event)) is not None:
            self._send(*finished)
        if self.status is not None:
            self.status.note(event)

    def _settle(self, event: Event, payload: str) -> Callable[[], None] | None:
        """Settle the announcement in the journal, if the event tells its fate; what the
        broker's acknowledgement of the event then does."""
        ident = event.announcement_id
        if self.journal is None or ident is None or not event.settles:
            return None
        if not self.journal.settle(ident, payload):
            return None  # not in the journal (refused before it was queued)
        return partial(self.journal.reported, ident)

    def send_unreported(self) -> None:
        """Send again the final events the broker did not acknowledge before Herald stopped
        (or before a reload replaced the connection). They are the same events, `ts` and all:
        a subscriber may see one twice, never none."""
        if self.journal is None or not (unreported := self.journal.unreported()):
            return
        log.info(
            "sending %d final events again: the broker had not acknowledged them", len(unreported)
        )
        for announcement_id, payload in unreported:
            self._send(
                self.topics.events,
                payload,
                on_acknowledged=partial(self.journal.reported, announcement_id),
            )

    def on_connected(self) -> None:
        """Each (re)connection: discovery for Home Assistant, and a fresh status."""
        self._publish_discovery()
        if self.status is not None:
            self.status.changed()

    def _publish_discovery(self) -> None:
        ha = self.config.home_assistant
        if not ha.discovery:
            return
        node = NodeInfo(
            node_id=self.config.node_id,
            base_topic=self.config.mqtt.base_topic,
            name=ha.name or f"Herald {self.config.node_id}",
            sw_version=__version__,
            discovery_prefix=ha.discovery_prefix,
        )
        for topic, payload in discovery_messages(node):
            self._send(topic, payload, retain=True)

    def send_proposal(self, payload: str) -> None:
        """A proposal of when a shared announcement starts (QoS 0: late is as good as lost)."""
        if self.bridge is not None:
            self.bridge.publish(self.topics.sync, payload, qos=0)

    def _publish_status(self, payload: str) -> None:
        self._send(self.topics.status, payload, retain=True)

    def _send(
        self,
        topic: str,
        payload: str,
        retain: bool = False,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> None:
        if self.bridge is not None:
            self.bridge.publish(
                topic, payload, qos=1, retain=retain, on_acknowledged=on_acknowledged
            )

    # --- in -----------------------------------------------------------------------------------

    def route(self, message: Inbound) -> None:
        """Act on one message; one that cannot be acted on costs a log line, never the daemon."""
        if self.dispatcher is None:
            return
        if message.retained and message.topic != self.ha_status_topic:
            self._ignore_retained(message)
            return
        try:
            self._route(message)
        except Exception as exc:  # a bug must cost one message, not the daemon or the others
            log.error(
                "could not handle a message on %s: %s", shown(message.topic), shown(repr(exc))
            )
            log.debug("the message's handling failed here", exc_info=True)

    def _ignore_retained(self, message: Inbound) -> None:
        """A retained command would act again at every restart and reconnection: not a command.
        (Home Assistant users delete one by publishing an empty retained message.)"""
        log.warning(
            "ignored a retained message on %s: commands are not retained; delete it with an "
            "empty retained message to that topic (mosquitto_pub -r -n -t TOPIC)",
            shown(message.topic),
        )

    def _route(self, message: Inbound) -> None:
        dispatcher, topics = self.dispatcher, self.topics
        assert dispatcher is not None
        topic, payload = message.topic, message.payload
        if topic == topics.sync:
            if self.synchroniser is not None:
                self.synchroniser.heard(payload)
        elif topics.is_say(topic):
            shared = announcement_key(topic, payload) if topics.is_shared(topic) else None
            dispatcher.accept(
                payload, source=topic, redelivered=message.redelivered, sync_key=shared
            )
        elif topics.rooms_named(topic) is not None:
            log.debug("%s does not name this speaker", shown(topic))
        elif topic == topics.stop:
            if not dispatcher.stop_current():
                log.info("stop: nothing was speaking")
        elif topic == topics.clear:
            if not dispatcher.clear_queue():
                log.info("clear: nothing was waiting")
        elif topic in (topics.volume_set, topics.quiet_set):
            self._set_control(topic, payload)
        elif topic == topics.siren_set:
            self._siren(payload)
        elif topic == hermes.SAY:
            if (translated := self.hermes.translate(payload)) is not None:
                dispatcher.accept(translated, source=topic)
        elif topic == self.ha_status_topic and payload.strip() == b"online":
            log.info("home assistant is online: publishing discovery again")
            self._publish_discovery()

    def _set_control(self, topic: str, payload: bytes) -> None:
        assert self.dispatcher is not None
        try:
            if topic == self.topics.volume_set:
                self.controls.volume = parse_volume(payload)
            else:
                self.controls.quiet = parse_switch(payload)
                self.dispatcher.set_quiet(self.controls.quiet)
        except ValueError as exc:
            log.warning("ignored %s: %s", topic, shown(str(exc)))
            return
        self._controls_changed()

    def set_volume(self, volume: float) -> None:
        """The default volume, set from elsewhere than MQTT (Home Assistant's media player)."""
        self.controls.volume = min(max(volume, 0.0), 1.0)
        self._controls_changed()

    def set_muted(self, muted: bool) -> None:
        """Muted (Home Assistant's media player): silent until unmuted, the volume kept."""
        self.controls.muted = muted
        self._controls_changed()

    def _controls_changed(self) -> None:
        self.controls_file.changed()
        controls = self.controls
        muted = ", muted" if controls.muted else ""
        log.info("volume %.2f%s, quiet mode %s", controls.volume, muted, controls.quiet)
        if self.status is not None:
            self.status.changed()
        self.volume_changed()

    def _siren(self, payload: bytes) -> None:
        """Home Assistant's siren: ON speaks the alert at critical priority; OFF stops it."""
        assert self.dispatcher is not None
        try:
            command = parse_siren(payload)
        except ValueError as exc:
            log.warning("ignored %s: %s", self.topics.siren_set, shown(str(exc)))
            return
        if not command.on:  # the alert stops, whether it speaks or still waits its turn
            if not self.dispatcher.withdraw(SIREN_ID):
                log.info("siren off: it was not sounding")
            return
        self.dispatcher.accept(self._siren_announcement(command), source=self.topics.siren_set)

    def _siren_announcement(self, command: SirenCommand) -> bytes:
        say: dict[str, Any] = {
            "text": self.config.home_assistant.siren_text,
            "id": SIREN_ID,
            "priority": PRIORITY_LEVELS["critical"],
            "repeat": 3,
            "chime": command.tone or "alarm",
        }
        if command.volume is not None:
            say["volume"] = command.volume
        return json.dumps(say).encode()

    def close(self) -> None:
        """At the end of a run: a control change still waiting to be saved is saved now."""
        self.controls_file.flush()
