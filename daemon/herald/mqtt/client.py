"""The broker connection: paho-mqtt's network thread, bridged into the asyncio event loop.

paho runs its own thread, which also reconnects with exponential backoff (1 s doubling up to
`mqtt.reconnect_max_s`). Its callbacks do nothing but hand their data to the event loop with
`call_soon_threadsafe`; every decision is taken in the loop.

The daemon's session is persistent (MQTT 5, clean start off, a session expiry): while Herald is
briefly away the broker keeps its subscriptions and the QoS 1 messages sent to them. Messages
are acknowledged by hand, after the handler has run (and journaled them), so a message the
broker counts as delivered is one Herald has on disk. The acknowledgements of the messages that
arrived together go out together, after one `before_ack` (the journal's sync to the disk): a
burst costs one disk flush per turn of the event loop, not one per message.

Flow control, both ways, so that no flood costs an event or starves the event loop:
- Outgoing: at most MAX_IN_FLIGHT publishes are in paho's hands at once; the rest wait here, in
  order (a retained message waits as its latest value only), and are handed over as the broker
  acknowledges. paho's own queue therefore never overflows ("Message queue full" dropped
  events) and never grows long (its bookkeeping scans that queue at every acknowledgement,
  holding a lock the event loop needs).
- Incoming: while more than BACKLOG_HIGH publishes wait, the acknowledgements of the messages
  handled are held back. The broker sends a client only so many unacknowledged messages (its
  in-flight window, 20 by default in mosquitto), so a flood waits at the broker, not here.
- From paho's thread, messages reach the loop through one inbox: one wake-up of the loop per
  batch, not one per message. (Each wake-up is a byte in the loop's self-pipe, which also
  carries signals in asyncio's design; a pipe full of them is how a SIGTERM got lost.) The
  loop takes at most INBOX_SLICE messages a turn, so timers (the watchdog) run in between.
- QoS 0 messages have no flow control: the broker sends them as fast as they come. Beyond
  INBOX_MAX_MESSAGES or INBOX_MAX_BYTES waiting to be handled, or BACKLOG_MAX publishes
  waiting to go out, more are dropped, and a warning says how many (QoS 1 messages are never
  dropped: the Receive Maximum bounds them).
- Packets larger than MAX_PACKET_BYTES beyond mqtt.max_payload_bytes are not sent to Herald at
  all (MQTT 5's Maximum Packet Size): the broker drops them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from herald.config import ConfigError, MqttConfig, read_secret
from herald.logsafe import shown

log = logging.getLogger(__name__)


class Inbound(NamedTuple):
    """One message from the broker."""

    topic: str
    payload: bytes
    redelivered: bool = False  # DUP: sent before and not acknowledged then (Herald was killed)
    retained: bool = False  # a retained message, replayed because Herald (re)subscribed


MessageHandler = Callable[[Inbound], None]

MAX_IN_FLIGHT = 100  # unacknowledged QoS 1 publishes handed to paho (and on the wire) at once
# Unacknowledged QoS 1 messages the broker may send Herald at once (MQTT 5's Receive Maximum;
# without it a broker may send 65,535). Holding acknowledgements back holds the broker back.
RECEIVE_MAXIMUM = 50
# The largest packet Herald takes, beyond mqtt.max_payload_bytes: room for a payload somewhat
# over the limit to be refused with a reason (an event) rather than dropped at the broker.
MAX_PACKET_BYTES = 1024 * 1024
# paho's own limit, never reached: Herald hands it at most MAX_IN_FLIGHT plus a few QoS 0 ones.
MAX_QUEUED_PUBLISHES = 10 * MAX_IN_FLIGHT
# Publishes waiting here beyond which incoming messages are not acknowledged (so the broker
# stops sending), and below which they are again. Every message a flood brings gives an event
# or two; the broker's in-flight window bounds what arrives meanwhile.
BACKLOG_HIGH = 1_000
BACKLOG_LOW = 200
# Publishes waiting beyond which QoS 0 messages are dropped too (each brings an event, and QoS 0
# cannot be held back at the broker): about 6 MB of events.
BACKLOG_MAX = 20_000
FLUSH_TIMEOUT_S = 2.0  # how long a disconnect waits for the broker to acknowledge the last events
INBOX_SLICE = 100  # messages handled per turn of the event loop
INBOX_MAX_MESSAGES = 10_000  # waiting in the inbox, beyond which QoS 0 messages are dropped
INBOX_MAX_BYTES = 32 * 1024 * 1024  # the same, for their payloads
DROP_REPORT_S = 5.0  # at most one warning this often about QoS 0 messages dropped


class Publish(NamedTuple):
    """One message to send, and what to call once the broker has it (QoS 1)."""

    topic: str
    payload: bytes | str
    qos: int
    retain: bool
    on_acknowledged: Callable[[], None] | None


class MqttBridge:
    """One broker session: subscribes on every (re)connect and hands messages to the loop."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        subscriptions: list[str],
        availability: str | None = None,
        persistent: bool = False,
        before_ack: Callable[[], None] | None = None,
    ) -> None:
        """A session that publishes at once (what is published before the connection waits
        for it); what it receives goes to the handler `serving` names."""
        self._cfg = cfg
        self._before_ack = before_ack
        self._acks_due: list[tuple[int, int]] = []  # (mid, qos) handled, not yet acknowledged
        self._acks_held: list[tuple[int, int]] = []  # handled, held back while publishes wait
        self._waiting: deque[Publish] = deque()  # publishes not yet handed to paho, in order
        self._waiting_retained: OrderedDict[str, Publish] = OrderedDict()  # latest by topic
        self._inbox: deque[tuple[Inbound, int, int]] = deque()  # (message, mid, qos), to the loop
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self._inbox_bytes = 0
        self._inbox_dropped = 0  # QoS 0 messages dropped (paho's thread counts, under the lock)
        self._drops_unreported = 0  # dropped and not yet in a warning (the loop's count)
        self._drops_reported_at = float("-inf")
        self._receiving = True
        self._subscriptions = subscriptions
        self._on_message: MessageHandler = _ignore
        self._on_connected: Callable[[], None] | None = None
        self._persistent = persistent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self.last_error: str | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=persistent,
        )
        if cfg.username:  # the password is a secret: a file, the environment, or a credential
            password = read_secret(cfg.password_file, "HERALD_MQTT_PASSWORD", "mqtt_password")
            self._client.username_pw_set(cfg.username, password)
        if cfg.tls:
            self._set_up_tls(cfg)
        self._availability = availability
        if availability is not None:  # the broker says `offline` for us if we vanish
            self._client.will_set(availability, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(1, cfg.reconnect_max_s)
        self._client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        self._client.max_inflight_messages_set(MAX_IN_FLIGHT)
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_publish = self._handle_publish
        # QoS 1 publishes not yet acknowledged: message id → what to call when they are.
        self._unacknowledged: dict[int, Publish] = {}  # by message id, in the order handed
        self._all_acknowledged = asyncio.Event()
        self._subscribe_mid: int | None = None

    @property
    def where(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    def _set_up_tls(self, cfg: MqttConfig) -> None:
        try:
            self._client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"config error: mqtt TLS files: {exc}"]) from None
        if cfg.tls_insecure:
            log.warning("mqtt: tls_insecure: the broker's host name is not checked")
            self._client.tls_insecure_set(True)

    def serving(
        self, on_message: MessageHandler, on_connected: Callable[[], None] | None = None
    ) -> MqttBridge:
        """The session, handing each message to `on_message` and calling `on_connected` at
        each (re)connection: `async with bridge.serving(...)`. (`async with bridge` alone
        publishes only: a message that arrives is acknowledged and dropped.)"""
        if self._loop is not None:
            raise RuntimeError("the session has started: its handlers are given before")
        self._on_message, self._on_connected = on_message, on_connected
        return self

    async def __aenter__(self) -> MqttBridge:
        self._loop = asyncio.get_running_loop()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._cfg.session_expiry_s if self._persistent else 0
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        # paho reads a whole packet into memory before anyone can look at its size: the broker
        # drops what is larger instead of sending it (a 100 MB payload would cost the daemon).
        properties.MaximumPacketSize = MAX_PACKET_BYTES + self._cfg.max_payload_bytes
        self._client.connect_async(
            self._cfg.host,
            self._cfg.port,
            self._cfg.keepalive_s,
            clean_start=not self._persistent,
            properties=properties,
        )
        self._client.loop_start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Disconnect only once the broker has acknowledged what was published: closing a socket
        # with an unread acknowledgement in it sends a TCP reset, and the broker may then lose
        # the last messages (the final events of a shutdown) that it has not read yet.
        self.stop_receiving()
        if self.connected:
            if self._availability is not None:  # ahead of what waits: it must not be left out
                self._hand_to_paho(Publish(self._availability, "offline", 1, True, None))
            await self._acknowledged(within_s=FLUSH_TIMEOUT_S)
        self._client.disconnect()
        # loop_stop joins paho's thread, which finishes its last socket work first.
        await asyncio.to_thread(self._client.loop_stop)

    def stop_receiving(self) -> None:
        """From now on, messages are neither handled nor acknowledged: the broker keeps them for
        the next session (Herald's is persistent) and sends them again then. For a shutdown: a
        message taken now could only be refused. Acknowledgements held back are sent: those
        messages were handled."""
        self._receiving = False
        self._release_held_acks()

    async def _acknowledged(self, within_s: float) -> None:
        if not self._unacknowledged and not self.backlog:
            return
        self._all_acknowledged.clear()
        try:
            await asyncio.wait_for(self._all_acknowledged.wait(), within_s)
        except TimeoutError:
            log.warning(
                "mqtt: %d messages unacknowledged at disconnect",
                len(self._unacknowledged) + self.backlog,
            )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, within_s: float | None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), within_s)
        except TimeoutError:
            return False
        return True

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> None:
        """Send now, or once the broker has acknowledged enough of what went before (in order;
        a retained message still waiting is replaced by a newer one to the same topic).

        `on_acknowledged` is called in the event loop once the broker has the message (QoS 1);
        never, if it is lost with this client.
        """
        message = Publish(topic, payload, qos, retain, on_acknowledged)
        if qos > 0 and (self.backlog or len(self._unacknowledged) >= MAX_IN_FLIGHT):
            if retain and on_acknowledged is None:
                self._waiting_retained.pop(topic, None)
                self._waiting_retained[topic] = message
            else:
                self._waiting.append(message)
            return
        self._hand_to_paho(message)

    def leftover(self) -> list[Publish]:
        """After the session: what the broker had not acknowledged, in order, for the next
        bridge to `adopt` (a reload). The broker may have some of it: sent again, a subscriber
        may see an event twice, never not at all. Not this session's `offline`: sent after the
        next session's `online`, it would leave Herald shown as unavailable while it runs."""
        left = [*self._unacknowledged.values(), *self._waiting, *self._waiting_retained.values()]
        self._unacknowledged, self._waiting, self._waiting_retained = {}, deque(), OrderedDict()
        return [message for message in left if message.topic != self._availability]

    def adopt(self, publishes: list[Publish]) -> None:
        """Send what an earlier bridge left, before anything of this one's."""
        for message in publishes:
            self.publish(*message)

    @property
    def backlog(self) -> int:
        """Publishes waiting for room in paho's hands."""
        return len(self._waiting) + len(self._waiting_retained)

    def _hand_to_paho(self, message: Publish) -> None:
        info = self._client.publish(
            message.topic, message.payload, qos=message.qos, retain=message.retain
        )
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            reason = paho.error_string(info.rc)
            log.warning("mqtt: could not publish to %s: %s", message.topic, reason)
        elif message.qos > 0:
            self._unacknowledged[info.mid] = message

    def _handle_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        self._in_loop(self._acknowledge, mid)

    def _acknowledge(self, mid: int) -> None:
        message = self._unacknowledged.pop(mid, None)
        self._hand_over_waiting()
        if not self._unacknowledged and not self.backlog:
            self._all_acknowledged.set()
        if message is not None and message.on_acknowledged is not None:
            message.on_acknowledged()

    def _hand_over_waiting(self) -> None:
        while self.backlog and len(self._unacknowledged) < MAX_IN_FLIGHT:
            if self._waiting:
                self._hand_to_paho(self._waiting.popleft())
            else:
                self._hand_to_paho(self._waiting_retained.popitem(last=False)[1])
        if self._acks_held and self.backlog <= BACKLOG_LOW:
            self._release_held_acks()

    # --- paho's thread -------------------------------------------------------------------------

    def _in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    def _handle_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker {self.where} refused the connection: {reason}"
            log.error("mqtt: %s", self.last_error)
            return
        self.last_error = None
        if not self._subscriptions:
            self._ready()
            return
        result, mid = client.subscribe([(topic, 1) for topic in self._subscriptions])
        if result != paho.MQTT_ERR_SUCCESS:
            log.warning("mqtt: could not subscribe: %s", paho.error_string(result))
        self._subscribe_mid = mid

    def _handle_subscribe(
        self, _client: paho.Client, _userdata: Any, mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [t for t, r in zip(self._subscriptions, reasons, strict=False) if r.is_failure]
        if refused:
            self.last_error = (
                f"broker {self.where} refused the subscription to {', '.join(refused)}"
            )
            log.error("mqtt: %s", self.last_error)
            return
        self._ready()

    def _ready(self) -> None:
        """Connected, and every subscription is in place: messages can flow both ways."""
        topics = ", ".join(self._subscriptions) or "nothing"
        log.info("mqtt: connected to %s, subscribed to %s", self.where, topics)
        if self._availability is not None:
            self._client.publish(self._availability, "online", qos=1, retain=True)
        self._in_loop(self._connected.set)
        if self._on_connected is not None:
            self._in_loop(self._on_connected)

    def _handle_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self.last_error = f"cannot reach broker {self.where}"
        log.warning(
            "mqtt: %s; retrying with backoff (at most %d s apart)",
            self.last_error,
            self._cfg.reconnect_max_s,
        )

    def _handle_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._in_loop(self._connected.clear)
        if reason.is_failure:
            log.warning("mqtt: lost the connection to %s (%s); reconnecting", self.where, reason)

    def _handle_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        # Only what Herald uses: paho's message object is ten times the size (its properties),
        # and thousands of QoS 0 messages may wait here while the loop is busy.
        inbound = Inbound(msg.topic, bytes(msg.payload), bool(msg.dup), bool(msg.retain))
        with self._inbox_lock:
            if msg.qos == 0 and (self._inbox_full() or self.backlog > BACKLOG_MAX):
                self._inbox_dropped += 1
                return
            self._inbox.append((inbound, msg.mid, msg.qos))
            self._inbox_bytes += len(inbound.payload)
            if self._inbox_scheduled:
                return  # the loop has yet to take the batch this one joins
            self._inbox_scheduled = True
        self._in_loop(self._take_inbox)

    def _inbox_full(self) -> bool:
        return len(self._inbox) >= INBOX_MAX_MESSAGES or self._inbox_bytes >= INBOX_MAX_BYTES

    # --- the event loop ------------------------------------------------------------------------

    def _take_inbox(self) -> None:
        """Handle the next slice of what arrived; the rest in a later turn of the loop."""
        with self._inbox_lock:
            count = min(len(self._inbox), INBOX_SLICE)
            batch = [self._inbox.popleft() for _ in range(count)]
            self._inbox_bytes -= sum(len(inbound.payload) for inbound, _, _ in batch)
            more = bool(self._inbox)
            self._inbox_scheduled = more
            dropped, self._inbox_dropped = self._inbox_dropped, 0
        if more:
            asyncio.get_running_loop().call_soon(self._take_inbox)
        self._drops_unreported += dropped
        if self._drops_unreported:
            self._report_drops(final=not more)
        for inbound, mid, qos in batch:
            try:
                self._deliver(inbound, mid, qos)
            except Exception as exc:  # (acknowledged all the same): the rest of the batch goes on
                where = shown(inbound.topic)
                log.error("mqtt: a message on %s could not be handled: %s", where, shown(repr(exc)))

    def _report_drops(self, final: bool) -> None:
        """One warning every DROP_REPORT_S at most while a flood lasts, and one at its end."""
        now = time.monotonic()
        if final or now - self._drops_reported_at >= DROP_REPORT_S:
            log.warning(
                "mqtt: dropped %d QoS 0 messages: they came faster than Herald could take "
                "them; send at QoS 1 and the broker holds them instead",
                self._drops_unreported,
            )
            self._drops_unreported, self._drops_reported_at = 0, now

    def _deliver(self, inbound: Inbound, mid: int, qos: int) -> None:
        if not self._receiving:
            return  # not acknowledged either: the broker sends it again next session
        try:
            self._on_message(inbound)
        finally:
            if self._persistent and qos > 0:
                if not self._acks_due:  # after the others already waiting in the loop
                    asyncio.get_running_loop().call_soon(self._acknowledge_handled)
                self._acks_due.append((mid, qos))

    def _acknowledge_handled(self) -> None:
        """Only now does the broker hear these messages arrived: they are on the disk. While
        many publishes wait, not yet: the broker holds back what comes next."""
        due, self._acks_due = self._acks_due, []
        if self._before_ack is not None:
            self._before_ack()
        if self.backlog > BACKLOG_HIGH or self._acks_held:  # (acknowledged in arrival order)
            if not self._acks_held:
                log.warning(
                    "mqtt: %d events wait for the broker; taking no more messages until it "
                    "has acknowledged most of them",
                    self.backlog,
                )
            self._acks_held.extend(due)
            return
        for mid, qos in due:
            self._client.ack(mid, qos)

    def _release_held_acks(self) -> None:
        held, self._acks_held = self._acks_held, []
        for mid, qos in held:
            self._client.ack(mid, qos)


def _ignore(_message: Inbound) -> None:
    """What a session that only publishes does with a message."""
