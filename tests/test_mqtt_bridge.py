"""The MQTT bridge against a real mosquitto: acknowledgements after the journal, in batches."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from herald.config import MqttConfig
from herald.mqtt import client
from herald.mqtt.client import Inbound, MqttBridge
from tests.support import Broker, MqttProbe, free_port, wait_for

BURST = 500


def publish_burst(broker: Broker, topic: str, count: int) -> None:
    """QoS 1 messages as fast as the client sends them, without waiting for each."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"burst-{uuid.uuid4()}")
    client.max_inflight_messages_set(count)
    client.connect(broker.host, broker.port)
    client.loop_start()
    sent = [client.publish(topic, f"message {n}", qos=1) for n in range(count)]
    for info in sent:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def slow_sync(syncs: list[int], received: int) -> None:
    """A disk flush on an SD card: tens of milliseconds, while more messages arrive."""
    syncs.append(received)
    time.sleep(0.02)


async def receive(
    broker: Broker, client_id: str, topic: str, count: int, syncs: list[int]
) -> list[bytes]:
    """Run a persistent bridge until `count` messages came (or 3 s of quiet); note how many
    had come each time it asked for a sync before acknowledging."""
    received: list[bytes] = []
    enough = asyncio.Event()

    def handle(message: Inbound) -> None:
        received.append(message.payload)
        if len(received) >= count:
            enough.set()

    config = MqttConfig(host=broker.host, port=broker.port, reconnect_max_s=1)
    bridge = MqttBridge(
        config,
        client_id,
        [topic],
        persistent=True,
        before_ack=lambda: slow_sync(syncs, len(received)),
    )
    async with bridge.serving(handle):
        assert await bridge.wait_connected(10)
        if count:
            await asyncio.wait_for(enough.wait(), 60)
        await asyncio.sleep(3.0 if not count else 0.5)  # the last acknowledgements go out
    return received


def test_a_burst_is_acknowledged_in_batches_after_a_sync_and_never_sent_again(
    broker: Broker,
) -> None:
    client_id, topic = f"bridge-{uuid.uuid4()}", f"bridge-test/{uuid.uuid4()}"
    asyncio.run(receive(broker, client_id, topic, 0, []))  # the session and its subscription
    publish_burst(broker, topic, BURST)  # waits in the session

    syncs: list[int] = []
    received = asyncio.run(receive(broker, client_id, topic, BURST, syncs))
    assert len(received) == BURST
    assert syncs == sorted(syncs) and syncs[-1] == BURST  # the last ones were synced too
    # While one flush runs, the next messages arrive (as many as the broker sends before it
    # hears of the last ones): they share the next flush instead of a flush each.
    assert len(syncs) < BURST / 5, len(syncs)

    # Every message was acknowledged: the broker has nothing to send again.
    assert asyncio.run(receive(broker, client_id, topic, 0, [])) == []


def test_a_flood_of_publishes_waits_its_turn_in_order_and_none_is_lost(broker: Broker) -> None:
    # 40,000 critical announcements once overflowed paho's queue: thousands of final events were
    # dropped ("Message queue full"), and paho's bookkeeping of a long queue starved the loop.
    topic, status = f"flood/{uuid.uuid4().hex}", f"status/{uuid.uuid4().hex}"
    heard = MqttProbe(broker, topic, status)
    count = 30_000

    async def flood() -> tuple[list[int], int]:
        acknowledged: list[int] = []
        config = MqttConfig(host=broker.host, port=broker.port)
        async with MqttBridge(config, f"flood-{uuid.uuid4()}", []) as bridge:
            assert await bridge.wait_connected(10)
            for n in range(count):
                bridge.publish(topic, str(n), on_acknowledged=partial(acknowledged.append, n))
            for n in range(500):  # a retained status, changing while the events wait
                bridge.publish(status, str(n), retain=True)
            backlog = bridge.backlog
            for _ in range(1200):
                if len(acknowledged) == count:
                    break
                await asyncio.sleep(0.1)
        return acknowledged, backlog

    try:
        acknowledged, backlog = asyncio.run(flood())
        assert backlog > 0  # the flood did wait here, not in paho
        assert acknowledged == list(range(count))
        wait_for(lambda: len(heard.seen_on(topic)) >= count, 30, "every event at the subscriber")
        events, statuses = heard.seen_on(topic), heard.seen_on(status)
        assert [int(p) for p in events] == list(range(count))  # each once, in order
        assert statuses[-1] == b"499" and len(statuses) < 500  # only the latest status waited
    finally:
        heard.publish(status, "", retain=True)
        heard.close()


def test_qos0_messages_beyond_what_can_wait_are_dropped_and_counted(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # QoS 0 has no flow control: a flood arrives as fast as the broker sends it. What cannot
    # wait (here 50 messages, while the handler is stuck) is dropped, and a warning counts it.
    monkeypatch.setattr(client, "INBOX_MAX_MESSAGES", 50)
    topic, count = f"qos0/{uuid.uuid4().hex}", 500
    handled: list[bytes] = []

    def slow_at_first(message: Inbound) -> None:
        if not handled:
            time.sleep(1.0)  # the loop is busy: everything else piles up in the inbox
        handled.append(message.payload)

    async def run() -> None:
        config = MqttConfig(host=broker.host, port=broker.port)
        qos0 = MqttBridge(config, f"qos0-{uuid.uuid4()}", [topic])
        async with qos0.serving(slow_at_first) as bridge:
            assert await bridge.wait_connected(10)
            sender = MqttProbe(broker)
            for n in range(count):
                sender.publish(topic, str(n), qos=0)
            sender.close()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if any("dropped" in r.getMessage() for r in caplog.records):
                    break

    asyncio.run(run())
    dropped = [int(r.getMessage().split()[2]) for r in caplog.records if "QoS 0" in r.getMessage()]
    assert 50 <= len(handled) < count
    assert len(handled) + sum(dropped) == count  # every message handled or counted


def test_what_one_bridge_could_not_send_the_next_one_sends_first(broker: Broker) -> None:
    # A reload replaces the bridge: events still waiting for the broker (here: it was never
    # reached) go out through the new one, in order, their acknowledgement hooks intact.
    topic = f"carried/{uuid.uuid4().hex}"
    heard = MqttProbe(broker, topic)
    acknowledged: list[int] = []

    async def run() -> None:
        away = MqttConfig(host=broker.host, port=free_port(), reconnect_max_s=1)
        availability = f"{topic}/availability"
        bridge = MqttBridge(away, f"old-{uuid.uuid4()}", [], availability)
        async with bridge as old:
            for n in range(150):
                old.publish(topic, str(n), on_acknowledged=partial(acknowledged.append, n))
            old.publish(availability, "offline", retain=True)  # its goodbye stays with it
        leftover = old.leftover()
        assert len(leftover) == 150 and not acknowledged
        here = MqttConfig(host=broker.host, port=broker.port)
        async with MqttBridge(here, f"new-{uuid.uuid4()}", []) as new:
            new.adopt(leftover)
            new.publish(topic, "the new bridge's own")
            assert await new.wait_connected(10)
            for _ in range(100):
                if len(acknowledged) == 150:
                    break
                await asyncio.sleep(0.1)

    try:
        asyncio.run(run())
        wait_for(lambda: len(heard.seen_on(topic)) >= 151, 10, "every message at the subscriber")
        assert heard.seen_on(topic) == [str(n).encode() for n in range(150)] + [
            b"the new bridge's own"
        ]
        assert acknowledged == list(range(150))
    finally:
        heard.close()


def test_a_message_far_over_the_payload_limit_is_never_sent_to_herald(broker: Broker) -> None:
    # paho reads a whole packet into memory first: a 100 MB payload would cost the daemon its
    # memory limit (and, unacknowledged, come back at every restart). The broker drops it.
    topic = f"big/{uuid.uuid4().hex}"
    received: list[int] = []

    async def run() -> None:
        config = MqttConfig(host=broker.host, port=broker.port, max_payload_bytes=16384)
        handle = lambda message: received.append(len(message.payload))  # noqa: E731
        big = MqttBridge(config, f"big-{uuid.uuid4()}", [topic])
        async with big.serving(handle) as bridge:
            assert await bridge.wait_connected(10)
            sender = MqttProbe(broker)
            sender.publish(topic, b"x" * (3 * 1024 * 1024))  # over the packet limit
            sender.publish(topic, b"y" * 20000)  # over the payload limit: still delivered
            sender.publish(topic, b"small")
            sender.close()
            for _ in range(100):
                if 5 in received:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(run())
    assert received == [20000, 5]
