"""Herald's MQTT topic tree, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Topics:
    base: str
    node: str
    groups: tuple[str, ...] = field(default=())

    def _own(self, leaf: str) -> str:
        return f"{self.base}/{self.node}/{leaf}"

    @property
    def say(self) -> str:
        """Announcements for this speaker."""
        return self._own("say")

    @property
    def say_all(self) -> str:
        """Announcements for every Herald speaker."""
        return f"{self.base}/all/say"

    def say_group(self, group: str) -> str:
        """Announcements for the speakers of a group (`mqtt.groups`)."""
        return f"{self.base}/group/{group}/say"

    @property
    def say_rooms(self) -> str:
        """Announcements for a list of speakers, `<base>/rooms/<node>,<node>/say` (a filter)."""
        return f"{self.base}/rooms/+/say"

    @property
    def sync(self) -> str:
        """Where the nodes that got one announcement agree on the instant it starts."""
        return f"{self.base}/sync"

    @property
    def stop(self) -> str:
        """Stop what this speaker is saying now (the queue goes on)."""
        return self._own("stop")

    @property
    def clear(self) -> str:
        """Drop everything waiting in this speaker's queue."""
        return self._own("clear")

    @property
    def volume_set(self) -> str:
        """Set the default volume: 0.0-1.0."""
        return self._own("volume/set")

    @property
    def quiet_set(self) -> str:
        """Quiet mode ON/OFF: only urgent announcements speak."""
        return self._own("quiet/set")

    @property
    def siren_set(self) -> str:
        """Home Assistant's siren entity: ON speaks the alert at critical priority, OFF stops."""
        return self._own("siren/set")

    @property
    def status(self) -> str:
        """What this speaker is doing (retained JSON)."""
        return self._own("status")

    @property
    def availability(self) -> str:
        """`online` (retained) while this speaker runs; the broker's will sets `offline`."""
        return self._own("availability")

    @property
    def events(self) -> str:
        """Lifecycle events of this speaker's announcements (JSON, not retained)."""
        return self._own("events")

    def say_topics(self) -> list[str]:
        return [self.say, self.say_all, *(self.say_group(g) for g in self.groups)]

    def subscriptions(self) -> list[str]:
        commands = [self.stop, self.clear, self.volume_set, self.quiet_set, self.siren_set]
        return [*self.say_topics(), self.say_rooms, *commands, self.sync]

    def rooms_named(self, topic: str) -> list[str] | None:
        """The speakers a room-list topic names; None if it is not one."""
        prefix, suffix = f"{self.base}/rooms/", "/say"
        if not (topic.startswith(prefix) and topic.endswith(suffix)):
            return None
        listed = topic[len(prefix) : len(topic) - len(suffix)]
        return None if "/" in listed else [name.strip() for name in listed.split(",")]

    def is_say(self, topic: str) -> bool:
        """Announcements for this speaker: its own, all, its groups, a room list naming it."""
        rooms = self.rooms_named(topic)
        return topic in self.say_topics() if rooms is None else self.node in rooms

    def is_shared(self, topic: str) -> bool:
        """An announcement topic that reaches (or may reach) more than this speaker."""
        rooms = self.rooms_named(topic)
        if rooms is not None:
            return len(set(rooms)) > 1
        return topic != self.say and topic in self.say_topics()
