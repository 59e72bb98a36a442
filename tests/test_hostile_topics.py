"""Anything on any topic: the Node, the Dispatcher and the journal, in one process, no broker.

Hypothesis sends arbitrary bytes and JSON, retained or not, redelivered or not, to every topic
Herald listens to. Whatever arrives: the handling never raises, each message leaves a trace (an
event or a log line), nothing a publisher sent reaches the log unescaped, every announcement
that was queued ends in exactly one final event, and Herald still takes the next announcement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.app import assemble, build_scheduler
from herald.config import Config
from herald.dispatcher import Dispatcher
from herald.events import Event
from herald.journal import QueueJournal
from herald.mqtt import hermes
from herald.mqtt.client import Inbound
from herald.mqtt.hermes import MAX_WAITING, HermesBridge
from herald.mqtt.topics import Topics
from herald.node import Node
from herald.speaker import Delivery
from tests.fake_slng import RecordingSink
from tests.test_voice_and_speaker import ToneVoice

FINAL = {"finished", "failed", "rejected", "expired", "dropped"}
TOPICS = Topics("herald", "prop", ("upstairs",))
EVERY_TOPIC = [
    *TOPICS.subscriptions(),
    "herald/rooms/prop,kitchen/say",  # a room list naming this speaker (shared: synced)
    "herald/rooms/kitchen,hall/say",  # ... and one that does not
    hermes.SAY,
    "homeassistant/status",
]


class Broker:
    """Stands in for the MQTT bridge: keeps what the Node publishes, acknowledges at once."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> None:
        if topic == TOPICS.events:
            self.events.append(json.loads(payload))
        if on_acknowledged is not None:
            on_acknowledged()


class Trace(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
announcement_like = st.fixed_dictionaries(
    {"text": st.text(max_size=40)},
    optional={
        "id": st.text(max_size=12) | st.sampled_from(["a", "b", "siren"]),
        "priority": st.sampled_from(["low", "normal", "high", "critical", 101, -1, "x"]),
        "ttl": st.floats() | st.integers(),
        "expires_at": st.floats() | st.text(max_size=30),
        "volume": st.floats(),
        "chime": st.booleans() | st.text(max_size=20),
        "repeat": st.integers(-2, 9),
        "state": st.sampled_from(["ON", "OFF", "", None]),
        "siteId": st.sampled_from(["prop", "default", "kitchen"]),
        "lang": st.text(max_size=10),  # Hermes: logged, never used
    },
)
payloads = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | announcement_like.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([b"", b"ON", b"OFF", b"0.5", b"nan", b"online", b"{", b"[" * 5000])
)
messages = st.builds(
    Inbound,
    topic=st.sampled_from(EVERY_TOPIC),
    payload=payloads,
    redelivered=st.booleans(),
    retained=st.booleans(),
)


def herald_in_a_box(state_dir: Path) -> tuple[Node, Dispatcher, Broker]:
    """The daemon's own parts (herald.app.assemble) around a broker stand-in, a tone voice
    and a recording output."""
    config = Config.model_validate(
        {
            "node_id": "prop",
            "state_dir": str(state_dir),
            "hermes": {"enabled": True},
            "queue": {"max_length": 5},
            "mqtt": {"rate_per_minute": 100_000, "rate_burst": 100_000},
        }
    )
    journal = QueueJournal(state_dir / "queue.journal")
    journal.load()
    broker = Broker()
    core = assemble(
        config,
        TOPICS,
        build_scheduler(config),
        journal,
        broker,
        [ToneVoice()],
        RecordingSink(),
        Delivery(16000),
    )
    return core.node, core.dispatcher, broker


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=25))
def test_anything_on_any_topic_has_one_fate_and_leaves_herald_listening(
    arriving: list[Inbound],
) -> None:
    trace, logger = Trace(), logging.getLogger("herald")
    level, logger.level = logger.level, logging.DEBUG
    logger.addHandler(trace)
    try:
        with tempfile.TemporaryDirectory() as state:
            broker = asyncio.run(deliver(arriving, Path(state), trace))
    finally:
        logger.removeHandler(trace)
        logger.setLevel(level)

    assert not any("could not handle" in line for line in trace.lines), trace.lines
    for line in trace.lines:  # a publisher's newline or escape never starts a line of its own
        assert line.isprintable(), repr(line)
    assert not open_announcements(broker.events), broker.events
    after = [e["event"] for e in broker.events if e["id"] == "after"]
    assert after in (["queued", "dropped"], ["rejected"]), after  # heard, and given its fate


def open_announcements(events: list[dict[str, Any]]) -> set[str]:
    """The ids queued and not yet given a final event (each queued one gets exactly one: a
    final event for an id with nothing open is a message refused, not a second fate)."""
    waiting: set[str] = set()
    for event in events:
        if event["event"] == "queued":
            assert event["id"] not in waiting, f"{event['id']} queued twice at once"
            waiting.add(event["id"])
        elif event["event"] in FINAL:
            waiting.discard(event["id"])
    return waiting


async def deliver(arriving: list[Inbound], state: Path, trace: Trace) -> Broker:
    node, dispatcher, broker = herald_in_a_box(state)
    for message in arriving:
        events, lines = len(broker.events), len(trace.lines)
        node.route(message)
        if message.topic != "homeassistant/status":  # `online` or not, nothing to say
            assert len(broker.events) > events or len(trace.lines) > lines, message
    await asyncio.sleep(0)  # the status and the last announcement, as after a turn of the loop
    # Herald still listens, and everything queued gets its end: the queue is cleared.
    node.route(Inbound(TOPICS.say, json.dumps({"text": "Still here.", "id": "after"}).encode()))
    dispatcher.stop_current()
    dispatcher.clear_queue()
    return broker


def test_hermes_forgets_the_oldest_says_beyond_its_bound() -> None:
    # A say whose id no event ever names (too long to be an id: rejected without it) used to
    # stay in the bridge forever: a flood of them grew memory without bound.
    bridge = HermesBridge("prop", lambda _topic, _payload: None)
    for n in range(MAX_WAITING + 1):
        bridge.translate(json.dumps({"text": "x", "id": f"{n:0>200}", "siteId": "prop"}).encode())
    first, last = f"{0:0>200}", f"{MAX_WAITING:0>200}"
    assert bridge.finished(Event("finished", first)) is None  # forgotten
    assert bridge.finished(Event("finished", last)) is not None
