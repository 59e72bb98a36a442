"""Herald's MQTT topic tree, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    base: str
    node: str

    @property
    def say(self) -> str:
        """Announcements for this speaker."""
        return f"{self.base}/{self.node}/say"

    @property
    def say_all(self) -> str:
        """Announcements for every Herald speaker."""
        return f"{self.base}/all/say"

    @property
    def stop(self) -> str:
        """Stop what this speaker is saying now (the queue goes on)."""
        return f"{self.base}/{self.node}/stop"

    @property
    def clear(self) -> str:
        """Drop everything waiting in this speaker's queue."""
        return f"{self.base}/{self.node}/clear"

    @property
    def availability(self) -> str:
        """`online` (retained) while this speaker runs; the broker's will sets `offline`."""
        return f"{self.base}/{self.node}/availability"

    @property
    def events(self) -> str:
        """Lifecycle events of this speaker's announcements (JSON, not retained)."""
        return f"{self.base}/{self.node}/events"

    def subscriptions(self) -> list[str]:
        return [self.say, self.say_all, self.stop, self.clear]

    def is_say(self, topic: str) -> bool:
        return topic in (self.say, self.say_all)
