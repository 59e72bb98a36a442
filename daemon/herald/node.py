"""One Herald speaker on the broker: its topics in, its discovery out.

The Node routes every message for this speaker to the Dispatcher (announcements, stop, clear),
to the control panel (volume, quiet mode), to the rooms' Synchroniser, or to the Hermes bridge;
and it publishes the discovery configs Home Assistant reads (again whenever Home Assistant
comes back online). Events leave through the outbox (herald.outbox), the status through the
status board (herald.status).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from herald import __version__
from herald.announcement import PRIORITY_LEVELS
from herald.commands import SirenCommand, parse_siren, parse_switch, parse_volume
from herald.config import Config
from herald.controls import ControlPanel
from herald.dispatcher import Dispatcher
from herald.logsafe import shown
from herald.mqtt import hermes
from herald.mqtt.client import Inbound
from herald.mqtt.discovery import SIREN_ID, NodeInfo, discovery_messages
from herald.mqtt.hermes import HermesBridge
from herald.mqtt.topics import Topics
from herald.outbox import Publisher
from herald.rooms import Synchroniser
from herald.status import StatusBoard
from herald.sync import announcement_key

log = logging.getLogger(__name__)


def subscriptions(config: Config, topics: Topics) -> list[str]:
    """Every topic a speaker listens to: its own, Home Assistant's status, Hermes' say."""
    extra = [ha_status_topic(config)] if config.home_assistant.discovery else []
    if config.hermes.enabled:
        extra.append(hermes.SAY)
    return [*topics.subscriptions(), *extra]


def ha_status_topic(config: Config) -> str:
    return f"{config.home_assistant.discovery_prefix}/status"


class Node:
    def __init__(
        self,
        config: Config,
        topics: Topics,
        dispatcher: Dispatcher,
        panel: ControlPanel,
        status: StatusBoard,
        publisher: Publisher,
        hermes_bridge: HermesBridge,
        synchroniser: Synchroniser | None = None,
    ) -> None:
        self.config = config
        self.topics = topics
        self.dispatcher = dispatcher
        self.panel = panel
        self.status = status
        self._publisher = publisher
        self.hermes = hermes_bridge
        self.synchroniser = synchroniser
        self.ha_status_topic = ha_status_topic(config)

    # --- out ----------------------------------------------------------------------------------

    def on_connected(self) -> None:
        """Each (re)connection: discovery for Home Assistant, and a fresh status."""
        self._publish_discovery()
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
            self._publisher.publish(topic, payload, retain=True)

    # --- in -----------------------------------------------------------------------------------

    def route(self, message: Inbound) -> None:
        """Act on one message; one that cannot be acted on costs a log line, never the daemon."""
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
        try:
            if topic == self.topics.volume_set:
                self.panel.set_volume(parse_volume(payload))
            else:
                quiet = parse_switch(payload)
                self.dispatcher.set_quiet(quiet)
                self.panel.set_quiet(quiet)
        except ValueError as exc:
            log.warning("ignored %s: %s", topic, shown(str(exc)))

    def _siren(self, payload: bytes) -> None:
        """Home Assistant's siren: ON speaks the alert at critical priority; OFF stops it."""
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
