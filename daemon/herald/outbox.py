"""The outbox: every event's one way out, and the one owner of Herald's delivery guarantee.

Every accepted announcement ends in exactly one final event, and a crash never loses one. The
outbox keeps that promise in one place, with the queue journal:
- a `queued` event puts its announcement in the journal before the event goes out (and the
  broker hears that the message arrived only after the journal's `sync`, which the MQTT bridge
  calls before it acknowledges a burst of messages);
- an event that settles an announcement's fate records the event in the journal, then goes to
  the broker; once the broker acknowledges it, the journal forgets the announcement;
- at the start of a run, the final events the broker had not acknowledged are sent again.

It also writes each event to the log (with journald fields) and hands it to whoever follows
the events inside Herald: the status, Hermes' sayFinished, Home Assistant's ESPHome player.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol

from herald.events import Event, EventSink
from herald.journal import QueueJournal
from herald.logsafe import shown

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where events go (the MQTT bridge): QoS 1, in order, `on_acknowledged` once the broker
    has one."""

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> None: ...


class Outbox:
    """The events' way out (see the module): `emit` is the event sink of the Speaker and the
    Dispatcher; `follow` adds those who follow the events inside Herald."""

    def __init__(self, publisher: Publisher, topic: str, journal: QueueJournal | None) -> None:
        """`topic`: the events topic; `journal`: None when the state directory is unusable
        (announcements then live in memory only)."""
        self._publisher = publisher
        self._topic = topic
        self._journal = journal
        self._followers: list[EventSink] = []

    @property
    def keeps_queue(self) -> bool:
        """What is not spoken yet survives a restart (there is a journal)."""
        return self._journal is not None

    def follow(self, sink: EventSink) -> None:
        """Hand every event to `sink` too, after it is on its way."""
        self._followers.append(sink)

    def emit(self, event: Event) -> None:
        """Log the event, keep the journal true to it, publish it, tell the followers."""
        _log(event)
        if event.kind == "queued" and event.announcement is not None and self._journal is not None:
            self._journal.add(event.announcement)  # on disk before anyone hears it was queued
        payload = event.to_json()
        self._publisher.publish(self._topic, payload, on_acknowledged=self._settle(event, payload))
        for follower in self._followers:
            follower(event)

    def _settle(self, event: Event, payload: str) -> Callable[[], None] | None:
        """Settle the announcement in the journal, if the event tells its fate; what the
        broker's acknowledgement of the event then does."""
        ident = event.announcement_id
        if self._journal is None or ident is None or not event.settles:
            return None
        if not self._journal.settle(ident, payload):
            return None  # not in the journal (refused before it was queued)
        return partial(self._journal.reported, ident)

    def send_unreported(self) -> None:
        """Send again the final events the broker did not acknowledge before Herald stopped
        (or before a reload replaced the connection). They are the same events, `ts` and all:
        a subscriber may see one twice, never none."""
        if self._journal is None or not (unreported := self._journal.unreported()):
            return
        log.info(
            "sending %d final events again: the broker had not acknowledged them", len(unreported)
        )
        for announcement_id, payload in unreported:
            self._publisher.publish(
                self._topic,
                payload,
                on_acknowledged=partial(self._journal.reported, announcement_id),
            )


def _log(event: Event) -> None:
    """One line per event, with the fields journald can be searched by."""
    fields = {"ANNOUNCEMENT_ID": event.announcement_id or "", "HERALD_EVENT": event.kind}
    if "voice" in event.details:
        fields["VOICE"] = str(event.details["voice"])
    details = "".join(f" {key}={shown(str(value), 200)}" for key, value in event.details.items())
    ident = shown(event.announcement_id) if event.announcement_id else "(no id)"
    log.info("%s %s%s", event.kind, ident, details, extra=fields)
