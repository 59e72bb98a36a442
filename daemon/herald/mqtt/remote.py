"""Asking a running daemon to speak: publish on its `say` topic, follow its `events` topic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from herald.config import Config
from herald.events import Event
from herald.mqtt.client import MqttBridge
from herald.mqtt.topics import Topics

FINAL_EVENTS = frozenset({"finished", "rejected", "failed", "expired", "dropped"})
CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 5.0  # a running daemon answers `queued` (or `rejected`) at once


class RemoteError(Exception):
    """The daemon could not be asked, or did not answer; the message says which."""


async def announce_via_daemon(
    config: Config,
    payload: dict[str, object],
    timeout_s: float,
    on_event: Callable[[Event], None],
    target: str | None = None,
) -> Event:
    """Publish the JSON payload (with an id) and report its events until a final one.

    `target` is the say topic (default: the configured node's); the events followed are always
    the configured node's (`--node` changes which node that is).
    """
    announcement_id = str(payload["id"])
    topics = Topics(config.mqtt.base_topic, config.node_id)
    events: asyncio.Queue[Event] = asyncio.Queue()

    def on_message(_topic: str, payload: bytes) -> None:
        event = _parse_event(payload)
        if event is not None and event.announcement_id == announcement_id:
            events.put_nowait(event)

    bridge = MqttBridge(config.mqtt, f"herald-say-{announcement_id}", [topics.events], on_message)
    async with bridge:
        if not await bridge.wait_connected(CONNECT_TIMEOUT_S):
            raise RemoteError(bridge.last_error or f"cannot reach broker {bridge.where}")
        topic = target.format(base=config.mqtt.base_topic) if target else topics.say
        bridge.publish(topic, json.dumps(payload), qos=1)
        return await _follow(events, on_event, config.node_id, timeout_s)


async def _follow(
    events: asyncio.Queue[Event], on_event: Callable[[Event], None], node: str, timeout_s: float
) -> Event:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    answered = False
    while True:
        wait = ANSWER_TIMEOUT_S if not answered else deadline - loop.time()
        try:
            event = await asyncio.wait_for(events.get(), max(wait, 0))
        except TimeoutError:
            if not answered:
                raise RemoteError(
                    f"no answer from herald node '{node}' within {ANSWER_TIMEOUT_S:.0f} s: "
                    "is `herald run` running with the same mqtt and node_id settings?"
                ) from None
            raise RemoteError(f"not finished within {timeout_s:.0f} s") from None
        answered = True
        on_event(event)
        if event.kind in FINAL_EVENTS:
            return event


def _parse_event(payload: bytes) -> Event | None:
    try:
        data = json.loads(payload)
        kind, ident, ts = data.pop("event"), data.pop("id"), float(data.pop("ts"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return Event(kind, ident, ts, details=data)
