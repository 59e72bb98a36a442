"""systemd integration: sd_notify, the watchdog, journald fields, SIGTERM and SIGHUP."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from herald.systemd import NativeJournalHandler, Notifier, keep_watchdog_fed
from herald.timing import AUDIO_RETRY_S
from tests.conftest import DaemonFactory
from tests.support import Broker, MqttProbe, NotifyListener, finished_or_failed, wait_for


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def test_the_daemon_tells_systemd_ready_status_watchdog_and_stopping(
    broker: Broker,
    make_daemon: DaemonFactory,
    node_id: str,
    notify_socket: NotifyListener,
) -> None:
    availability = MqttProbe(broker, f"herald/{node_id}/availability")
    daemon = make_daemon(broker)
    daemon.env["NOTIFY_SOCKET"] = str(notify_socket.path)
    daemon.env["WATCHDOG_USEC"] = "1000000"  # a 1 s watchdog: a ping every 0.5 s
    daemon.start(wait_until="herald: ready")

    ready = notify_socket.until("READY", timeout=10)
    assert ready["READY"] == "1"
    assert ready["STATUS"] == "idle · espeak ready · queue 0"
    assert availability.messages.get(timeout=10) == (f"herald/{node_id}/availability", b"online")

    time.sleep(2.0)  # the listener stamps each ping as it comes
    pings = notify_socket.times_of("WATCHDOG")
    assert len(pings) >= 3
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.9

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert daemon.process.wait(10) == 0
    assert time.monotonic() - started < 2.0
    assert notify_socket.until("STOPPING", timeout=2)["STOPPING"] == "1"
    assert availability.messages.get(timeout=5) == (f"herald/{node_id}/availability", b"offline")
    availability.close()


def test_a_broker_that_comes_late_extends_the_start_instead_of_timing_out(
    tmp_path: Path, make_daemon: DaemonFactory, notify_socket: NotifyListener
) -> None:
    """Booting before the broker (or with the speaker unplugged) is waiting, not failing: each
    retry asks systemd for more time than the next retry needs, and READY follows the broker."""
    broker = Broker(tmp_path)  # not started yet
    daemon = make_daemon(broker)
    daemon.env["NOTIFY_SOCKET"] = str(notify_socket.path)
    daemon.start(wait_until="herald: node")
    try:
        extend = notify_socket.until("EXTEND_TIMEOUT_USEC", timeout=15)
        more_us = int(extend["EXTEND_TIMEOUT_USEC"])
        assert more_us >= 2 * AUDIO_RETRY_S * 1_000_000  # two retries' worth, at least
        assert extend["STATUS"].startswith("waiting for the broker: "), extend
        assert not notify_socket.times_of("READY")
        broker.start()
        assert notify_socket.until("READY", timeout=20)["READY"] == "1"
    finally:
        broker.stop()


def test_a_blocked_event_loop_stops_the_watchdog_pings(notify_socket: NotifyListener) -> None:
    async def scenario() -> None:
        feeding = asyncio.create_task(keep_watchdog_fed(Notifier(str(notify_socket.path)), 0.1))
        await asyncio.sleep(0.5)
        time.sleep(1.0)  # noqa: ASYNC251 (the loop hangs on purpose: nothing may ping)
        await asyncio.sleep(0.5)
        feeding.cancel()

    asyncio.run(scenario())  # the listener's thread stamps each ping, while the loop hangs too
    pings = notify_socket.times_of("WATCHDOG")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) > 0.9  # the hang shows as a gap a watchdog would catch
    assert sorted(gaps)[len(gaps) // 2] < 0.3  # otherwise a ping every 0.1 s


STUCK = "ALSA device 'usb' has been stuck for 11 s writing to it"


def first_or_none(stuck: list[str]) -> Callable[[], str | None]:
    """What a `hung` check says: the first of `stuck`, while there is one."""
    return lambda: stuck[0] if stuck else None


def test_something_stuck_outside_the_loop_stops_the_pings_and_says_what(
    notify_socket: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop turns, but the audio thread is stuck on its device: no pings (so systemd
    restarts Herald), the status line says why, one ERROR line; unstuck, the pings go on."""
    stuck: list[str] = []
    marks: dict[str, float] = {}

    async def scenario() -> None:
        notifier = Notifier(str(notify_socket.path))
        feeding = asyncio.create_task(
            keep_watchdog_fed(notifier, 0.1, lambda: "idle", first_or_none(stuck))
        )
        await asyncio.sleep(0.5)
        stuck.append(STUCK)
        marks["stuck"] = time.monotonic()
        await asyncio.sleep(1.0)
        stuck.clear()
        marks["unstuck"] = time.monotonic()
        await asyncio.sleep(0.5)
        feeding.cancel()

    with caplog.at_level(logging.WARNING, logger="herald.systemd"):
        asyncio.run(scenario())

    during = [f for at, f in notify_socket.messages if marks["stuck"] + 0.3 < at < marks["unstuck"]]
    assert len(during) >= 4, notify_socket.messages  # the loop went on telling the status
    assert not [f for f in during if "WATCHDOG" in f], during
    assert all(f["STATUS"] == f"idle · {STUCK}" for f in during), during
    pings = notify_socket.times_of("WATCHDOG")
    assert len([at for at in pings if at < marks["stuck"]]) >= 3
    assert len([at for at in pings if at > marks["unstuck"]]) >= 2  # fed again
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{STUCK}; the watchdog is no longer fed, so systemd restarts Herald"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("not stuck any more"), warnings


def test_without_a_watchdog_something_stuck_is_still_logged_once(
    notify_socket: NotifyListener, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("herald.systemd.HEALTH_CHECK_S", 0.05)
    stuck = [STUCK]

    async def scenario() -> None:
        notifier = Notifier(str(notify_socket.path))
        feeding = asyncio.create_task(
            keep_watchdog_fed(notifier, None, lambda: "idle", first_or_none(stuck))
        )
        await asyncio.sleep(0.5)
        stuck.clear()
        await asyncio.sleep(0.3)
        feeding.cancel()
        # With nothing to feed and nothing to watch, there is nothing to do.
        await asyncio.wait_for(keep_watchdog_fed(notifier, None), 1)

    with caplog.at_level(logging.WARNING, logger="herald.systemd"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{STUCK}; without systemd's watchdog nothing restarts Herald"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("not stuck any more"), warnings
    time.sleep(0.3)  # anything sent would have arrived by now
    assert notify_socket.messages == []  # no watchdog: systemd is told nothing


def test_abstract_notify_socket_addresses_are_supported() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0herald-test-notify")
        listener.settimeout(2)
        Notifier("@herald-test-notify").ready("all good")
        assert listener.recv(100) == b"READY=1\nSTATUS=all good"


def test_outside_systemd_notifying_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.active
    notifier.ready("nothing listens")  # does not raise


def test_journal_records_carry_structured_fields(tmp_path: Path) -> None:
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    journal.settimeout(2)
    handler = NativeJournalHandler(address=str(tmp_path / "journal"))
    logger = logging.getLogger("herald.test.journal")
    logger.addHandler(handler)
    logger.warning("two\nlines", extra={"ANNOUNCEMENT_ID": "a1", "VOICE": "espeak"})
    logger.removeHandler(handler)
    data = journal.recv(65536)
    journal.close()
    assert b"ANNOUNCEMENT_ID=a1\n" in data and b"VOICE=espeak\n" in data
    assert b"PRIORITY=4\n" in data and b"SYSLOG_IDENTIFIER=herald\n" in data
    assert b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n" in data


def test_sighup_reloads_the_config_and_keeps_the_queue(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    tmp_path: Path,
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    assert daemon.process is not None
    # Three announcements queued behind a long one; a reload comes while the first speaks.
    long_text = "This is a long announcement. " * 300
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": long_text, "id": "first"}))
    for n in range(3):
        probe.publish(f"herald/{node_id}/say", json.dumps({"text": f"Queued {n}.", "id": f"q{n}"}))
    probe.events_until(lambda events: sum(e["event"] == "queued" for e in events) == 4)
    config = daemon.config_path.read_text()
    daemon.config_path.write_text(
        config.replace("[audio]\n", "[voice.espeak]\nspeed_wpm = 300\n[audio]\n")
    )
    daemon.process.send_signal(signal.SIGHUP)
    events = probe.events_until(finished_or_failed("q2"), timeout=60)

    finished = [e["id"] for e in events if e["event"] == "finished"]
    assert set(finished) >= {"q0", "q1", "q2"}
    assert not [e for e in events if e["event"] in ("failed", "dropped", "expired")]
    daemon.wait_for_log("configuration reloaded")
    assert daemon.alive


def test_a_bad_config_on_reload_keeps_the_running_one(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    assert daemon.process is not None
    daemon.config_path.write_text(daemon.config_path.read_text() + "[bogus]\nkey = 1\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log("reload refused")
    wait_for(lambda: sum("herald: ready" in line for line in daemon.log_lines) >= 2, 20, "ready")
    probe.publish(f"herald/{node_id}/say", json.dumps({"text": "Still fine.", "id": "ok"}))
    assert probe.events_until(finished_or_failed("ok"))[-1]["event"] == "finished"
    refused = next(line for line in daemon.log_lines if "reload refused" in line)
    assert "bogus: unknown key" in refused
