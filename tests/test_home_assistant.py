"""Home Assistant and delivery guarantees, end to end with a real mosquitto and the real daemon."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonFactory
from tests.support import (
    NO_RATE_LIMIT,
    Broker,
    MqttProbe,
    fates,
    finished_or_failed,
    is_final,
    rss_kib,
    wait_for,
)

COUNT = 10_000


def retained_bytes(broker: Broker, topic: str, timeout: float = 10) -> bytes:
    probe = MqttProbe(broker, topic)
    try:
        return probe.messages.get(timeout=timeout)[1]
    finally:
        probe.close()


def retained(broker: Broker, topic: str, timeout: float = 10) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(retained_bytes(broker, topic, timeout))
    return status


def collect_discovery(broker: Broker, node_id: str) -> dict[str, dict[str, Any]]:
    probe = MqttProbe(broker, f"homeassistant/+/herald_{node_id}/+/config")
    configs: dict[str, dict[str, Any]] = {}
    try:
        while len(configs) < 9:
            topic, payload = probe.messages.get(timeout=10)
            configs[topic] = json.loads(payload)
    finally:
        probe.close()
    return configs


def test_home_assistant_finds_the_device_and_its_notify_entity_speaks(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    make_daemon(broker).start(wait_until="herald: ready")
    configs = collect_discovery(broker, node_id)
    components = sorted(topic.split("/")[1] for topic in configs)
    assert components == [
        "button",
        "notify",
        "number",
        "sensor",
        "sensor",
        "sensor",
        "sensor",
        "siren",
        "switch",
    ]
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1
    assert len({c["unique_id"] for c in configs.values()}) == 9
    notify = next(c for t, c in configs.items() if "/notify/" in t)

    probe.publish(notify["command_topic"], "The notify entity speaks.")  # what HA sends
    events = probe.events_until(lambda ev: any(is_final(e) for e in ev))
    assert events[-1]["event"] == "finished"


def test_discovery_is_published_again_when_home_assistant_comes_online(
    broker: Broker, make_daemon: DaemonFactory, node_id: str
) -> None:
    make_daemon(broker).start(wait_until="herald: ready")
    collect_discovery(broker, node_id)
    listener = MqttProbe(broker, f"homeassistant/button/herald_{node_id}/+/config")
    listener.messages.get(timeout=10)  # the retained copy
    listener.publish("homeassistant/status", "online")
    _, payload = listener.messages.get(timeout=10)  # published anew
    listener.close()
    assert json.loads(payload)["command_topic"] == f"herald/{node_id}/stop"


def test_status_volume_and_quiet_mode(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    status = retained(broker, f"herald/{node_id}/status")
    assert status["state"] == "idle" and status["queue_length"] == 0
    assert (status["volume"], status["quiet"], status["voice"]) == (1.0, False, "espeak")

    probe.publish(f"herald/{node_id}/volume/set", "0.3")
    probe.publish(f"herald/{node_id}/quiet/set", "ON")
    wait_for(lambda: retained(broker, f"herald/{node_id}/status")["quiet"] is True, 10, "quiet")
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Held.", "id": "held"}))
    probe.publish(
        f"herald/{node_id}/say",
        json.dumps({"text": "Urgent.", "id": "urgent", "priority": "critical"}),
    )
    events = probe.events_until(finished_or_failed("urgent"))
    assert not [e for e in events if e["id"] == "held" and e["event"] != "queued"]
    probe.publish(f"herald/{node_id}/quiet/set", "OFF")
    assert probe.events_until(finished_or_failed("held"))[-1]["event"] == "finished"

    # Idle again once the last one has ended (its event went out while it was still current).
    wait_for(lambda: retained(broker, f"herald/{node_id}/status")["state"] == "idle", 10, "idle")
    status = retained(broker, f"herald/{node_id}/status")
    assert status["volume"] == 0.3 and status["audio"] is None
    assert status["last"]["id"] == "held" and status["last"]["text"] == "Held."
    daemon.stop()
    daemon.start(wait_until="herald: ready")  # the volume is remembered
    assert retained(broker, f"herald/{node_id}/status")["volume"] == 0.3


def test_the_siren_speaks_a_critical_alert_and_off_stops_it(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    make_daemon(
        broker, '[home_assistant]\nsiren_text = "Intruder alert. ' + "Leave now. " * 40 + '"\n'
    ).start(wait_until="herald: ready")
    probe.publish(f"herald/{node_id}/siren/set", json.dumps({"state": "ON", "tone": "bell"}))
    started = probe.events_until(lambda ev: any(e["event"] == "started" for e in ev))
    queued = next(e for e in started if e["event"] == "queued")
    assert (queued["id"], queued["priority"]) == ("siren", "critical")
    probe.publish(f"herald/{node_id}/siren/set", json.dumps({"state": "OFF"}))
    events = probe.events_until(finished_or_failed("siren"))
    assert (events[-1]["event"], events[-1]["reason"]) == ("dropped", "stopped")


def test_hermes_say_is_answered_with_say_finished(
    broker: Broker, make_daemon: DaemonFactory, node_id: str
) -> None:
    make_daemon(broker, "[hermes]\nenabled = true\n").start(wait_until="herald: ready")
    listener = MqttProbe(broker, "hermes/tts/sayFinished")
    listener.publish(
        "hermes/tts/say", json.dumps({"text": "Other room.", "id": "x", "siteId": "elsewhere"})
    )
    say = {"text": "Hello Rhasspy.", "id": "h-1", "siteId": node_id, "lang": "en"}
    listener.publish("hermes/tts/say", json.dumps(say))
    _, payload = listener.messages.get(timeout=30)
    listener.close()
    assert json.loads(payload) == {"id": "h-1", "siteId": node_id}


def test_a_message_sent_while_herald_is_down_is_spoken_when_it_is_back(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGKILL)  # a crash: no clean disconnect
    daemon.process.wait(5)
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "While away.", "id": "away"}))
    daemon.start(wait_until="herald: ready")
    assert probe.events_until(finished_or_failed("away"))[-1]["event"] == "finished"


def test_after_sigkill_the_queue_is_spoken_in_priority_order_and_stale_ones_expire(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    assert daemon.process is not None
    probe.publish(f"herald/{node_id}/quiet/set", "ON")  # holds all below high: they stay queued
    for ident, priority, ttl in (
        ("low", "low", 600),
        ("urgent", 70, 600),  # just below high
        ("normal", "normal", 600),
        ("stale", "normal", 1),
    ):
        say = {"text": f"The {ident} one.", "id": ident, "priority": priority, "ttl": ttl}
        probe.publish(f"herald/{node_id}/say", json.dumps(say))
    probe.events_until(lambda ev: sum(e["event"] == "queued" for e in ev) == 4)
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(5)
    time.sleep(1.5)  # "stale" goes stale while Herald is down
    probe.publish(f"herald/{node_id}/quiet/set", "OFF")  # waits in the session for Herald
    daemon.start(wait_until="herald: ready")
    events = probe.events_until(lambda ev: len(fates(ev)) == 4, timeout=60)
    assert fates(events) == {
        "stale": ["expired"],
        "urgent": ["finished"],
        "normal": ["finished"],
        "low": ["finished"],
    }
    finished = [e["id"] for e in events if e["event"] == "finished"]
    assert finished == ["urgent", "normal", "low"]


def test_broker_restart_reconnects_and_republishes_availability_and_discovery(
    tmp_path: Path, make_daemon: DaemonFactory, node_id: str
) -> None:
    broker = Broker(tmp_path, persistent=True)
    broker.start()
    try:
        daemon = make_daemon(broker)
        daemon.start(wait_until="herald: ready")
        broker.stop()
        daemon.wait_for_log("lost the connection")
        broker.start()
        wait_for(lambda: sum("subscribed to" in x for x in daemon.log_lines) >= 2, 30, "resub")
        # `online` is published after the resubscription is logged: wait for it to land.
        wait_for(
            lambda: retained_bytes(broker, f"herald/{node_id}/availability") == b"online",
            10,
            "availability online again",
        )
        configs = collect_discovery(broker, node_id)  # retained, and published anew
        assert len(configs) == 9
    finally:
        broker.stop()


def random_payload(rng: random.Random, n: int) -> bytes:
    """One of the shapes a careless or hostile publisher sends; a third of them valid."""
    shape = rng.randrange(10)
    if shape == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if shape == 1:
        return "".join(
            chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 20))
        ).encode()
    if shape == 2:
        return b"{" + rng.randbytes(rng.randrange(0, 20))
    if shape == 3:
        return json.dumps([rng.random()]).encode()
    if shape == 4:
        keys = ["text", "id", "priority", "ttl", "volume", "chime", "repeat", "bogus"]
        values: list[Any] = [None, True, -1, 0, 7, 101, 2.5, "", "x", "low", [], {}]
        return json.dumps({rng.choice(keys): rng.choice(values) for _ in range(3)}).encode()
    if shape == 5:
        return b"x" * rng.choice([16385, 20000])
    priority = rng.choice(["low", "normal", "high", "critical"])
    return json.dumps(
        {"text": f"Fuzz {n}.", "id": f"f{n}", "priority": priority, "chime": False}
    ).encode()


@pytest.mark.timeout(900)
def test_ten_thousand_random_payloads_each_get_a_fate_and_memory_stays_bounded(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker, mqtt=NO_RATE_LIMIT)
    daemon.start(wait_until="herald: ready")
    before = rss_kib(daemon)
    rng = random.Random(20261121)
    for n in range(COUNT):
        probe.publish(f"herald/{node_id}/say", random_payload(rng, n), qos=0)
    outcomes: dict[str, int] = {}

    def settled(events: list[dict[str, Any]]) -> bool:
        return sum(is_final(e) for e in events) >= COUNT

    events = probe.events_until(settled, timeout=600)
    for event in events:
        outcomes[event["event"]] = outcomes.get(event["event"], 0) + 1
    assert daemon.alive
    assert outcomes.get("rejected", 0) > COUNT // 3 and outcomes.get("finished", 0) > 10, outcomes
    assert all(e.get("reason") for e in events if e["event"] in ("rejected", "dropped"))
    assert rss_kib(daemon) - before < 60_000, (before, rss_kib(daemon))


def test_tls_and_a_password_from_a_file(
    tmp_path: Path, make_daemon: DaemonFactory, node_id: str
) -> None:
    make_ca_and_server_cert(tmp_path)
    passwords = tmp_path / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "herald", "s3cret"],
        check=True,
        capture_output=True,
    )
    broker = Broker(
        tmp_path,
        host="127.0.0.1",  # the certificate names it too (no /etc/hosts is needed)
        listener_options=(
            f"allow_anonymous false\npassword_file {passwords}\n"
            f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
            f"keyfile {tmp_path / 'server.key'}\n"
        ),
    )
    broker.start()
    (tmp_path / "mqtt_password").write_text("s3cret\n")
    try:
        daemon = make_daemon(
            broker,
            mqtt=f'tls = true\nca_file = "{tmp_path / "ca.pem"}"\n'
            f'username = "herald"\npassword_file = "{tmp_path / "mqtt_password"}"\n',
        )
        daemon.start(wait_until="herald: ready")
        assert not any("s3cret" in line for line in daemon.log_lines)
        daemon.stop()
        (tmp_path / "mqtt_password").write_text("wrong\n")
        check = subprocess.run(
            [sys.executable, "-m", "herald", "check", "--config", str(daemon.config_path)],
            env=daemon.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 1
        assert "✘ broker 127.0.0.1" in check.stdout and "Not authorized" in check.stdout
        assert "wrong" not in check.stdout + check.stderr
    finally:
        broker.stop()


def make_ca_and_server_cert(where: Path) -> None:
    """A throwaway CA and a certificate for `localhost` it signed (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (where / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    )


def test_remove_discovery_clears_every_retained_config(
    broker: Broker, make_daemon: DaemonFactory, node_id: str
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    assert len(collect_discovery(broker, node_id)) == 9
    daemon.stop()
    removed = subprocess.run(
        [
            sys.executable,
            "-m",
            "herald",
            "run",
            "--remove-discovery",
            "--config",
            str(daemon.config_path),
        ],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert removed.returncode == 0, removed.stderr
    probe = MqttProbe(
        broker, f"homeassistant/+/herald_{node_id}/+/config", f"herald/{node_id}/status"
    )
    time.sleep(1.0)  # retained messages arrive at once on subscribing; none should
    assert probe.messages.empty()
    probe.close()
