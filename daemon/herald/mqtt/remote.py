"""Asking a running daemon to speak: publish on its `say` topic, follow its `events` topic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from herald.config import Config
from herald.events import Event
from herald.mqtt.client import Inbound, MqttBridge
from herald.mqtt.topics import Topics

CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 5.0  # a running daemon answers `queued` (or `rejected`) at once
OTHERS_ANSWER_S = 1.0  # with `all` or a group: how long after the first the others may answer


class RemoteError(Exception):
    """The daemon could not be asked, or did not answer; the message says which."""


async def announce_via_daemon(
    config: Config,
    payload: dict[str, object],
    timeout_s: float,
    on_event: Callable[[str, Event], None],
    target: str | None = None,
) -> dict[str, Event]:
    """Publish the JSON payload (with an id) and report its events until a final one; the
    final event of each node that spoke it.

    Without `target` it goes to the configured node (`--node` changes which) and that node's
    events are followed. With a `target` (all, a group) every node that answers within
    ANSWER_TIMEOUT_S is followed to its final event.
    """
    announcement_id = str(payload["id"])
    topics = Topics(config.mqtt.base_topic, config.node_id)
    events: asyncio.Queue[tuple[str, Event]] = asyncio.Queue()

    def on_message(message: Inbound) -> None:
        event = _parse_event(message.payload)
        if event is not None and event.announcement_id == announcement_id:
            events.put_nowait((message.topic.split("/")[-2], event))  # <base>/<node>/events

    followed = f"{config.mqtt.base_topic}/+/events" if target else topics.events
    bridge = MqttBridge(config.mqtt, f"herald-say-{announcement_id}", [followed])
    async with bridge.serving(on_message):
        if not await bridge.wait_connected(CONNECT_TIMEOUT_S):
            raise RemoteError(bridge.last_error or f"cannot reach broker {bridge.where}")
        topic = target.format(base=config.mqtt.base_topic) if target else topics.say
        bridge.publish(topic, json.dumps(payload), qos=1)
        who = "any herald node" if target else f"herald node '{config.node_id}'"
        return await _follow(events, on_event, who, timeout_s, single=target is None)


async def _follow(
    events: asyncio.Queue[tuple[str, Event]],
    on_event: Callable[[str, Event], None],
    who: str,
    timeout_s: float,
    single: bool,
) -> dict[str, Event]:
    """Report events until each node that answered in time has a final one.

    The first answer may take ANSWER_TIMEOUT_S; the other nodes of `all` or a group answer
    within OTHERS_ANSWER_S of it (a daemon answers `queued` at once) or are not waited for.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    answers_until = loop.time() + ANSWER_TIMEOUT_S
    finals: dict[str, Event] = {}
    answered: set[str] = set()
    while True:
        pending = answered - finals.keys()
        if answered and not pending and (single or loop.time() >= answers_until):
            return finals
        until = deadline if pending else answers_until
        try:
            node, event = await asyncio.wait_for(events.get(), max(until - loop.time(), 0))
        except TimeoutError:
            if not answered:
                raise RemoteError(
                    f"no answer from {who} within {ANSWER_TIMEOUT_S:.0f} s: "
                    "is `herald run` running with the same mqtt and node_id settings?"
                ) from None
            if pending:
                raise RemoteError(f"not finished within {timeout_s:.0f} s") from None
            return finals
        if node not in answered:
            if loop.time() > answers_until:
                continue  # too late to be waited for
            if not answered:
                answers_until = loop.time() + OTHERS_ANSWER_S
            answered.add(node)
        on_event(node, event)
        if event.settles or event.kind == "rejected":  # its fate, or it was never accepted
            finals[node] = event


def _parse_event(payload: bytes) -> Event | None:
    try:
        data = json.loads(payload)
        kind, ident, ts = data.pop("event"), data.pop("id"), float(data.pop("ts"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return Event(kind, ident, ts, details=data)
