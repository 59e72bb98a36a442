"""The MQTT bridge against a real mosquitto: acknowledgements after the journal, in batches."""

from __future__ import annotations

import asyncio
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from herald.config import MqttConfig
from herald.mqtt.client import MqttBridge
from tests.support import Broker

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

    def handle(_topic: str, payload: bytes, _redelivered: bool) -> None:
        received.append(payload)
        if len(received) >= count:
            enough.set()

    config = MqttConfig(host=broker.host, port=broker.port, reconnect_max_s=1)
    bridge = MqttBridge(
        config,
        client_id,
        [topic],
        handle,
        persistent=True,
        before_ack=lambda: slow_sync(syncs, len(received)),
    )
    async with bridge:
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
