"""Fixtures that start real peers: mosquitto, ALSA capture devices, the daemon process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import (
    Broker,
    Capture,
    DaemonProcess,
    MpdServer,
    MqttProbe,
    PulseServer,
    daemon_env,
    mpd_command,
    room_sinks,
    write_alsa_config,
    write_config,
)

# Property tests judge Herald, not the machine: a fresh checkout builds Hypothesis' Unicode
# tables on its first run, and a loaded 2-core machine or a Pi is slow to generate examples, so
# neither the time per example nor the time to make one fails a test. The examples and every
# assertion stay as they are.
settings.register_profile("herald", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("herald")

# Every test is in one tier, by its file: `pytest -m unit` runs the pure logic in seconds;
# CI runs every tier. (Registered in pyproject.toml.)
UNIT_FILES = {
    "test_announcement.py",
    "test_chimes.py",
    "test_commands.py",
    "test_config.py",
    "test_config_reference.py",
    "test_loudness.py",
    "test_deepgram_protocol.py",
    "test_discovery.py",
    "test_logsafe.py",
    "test_priorities.py",
    "test_pure_core.py",
    "test_scheduler.py",
    "test_status.py",
    "test_sync.py",
    "test_text.py",
    "test_timing.py",
}
END_TO_END_FILES = {
    "test_bench_smoke.py",
    "test_cli.py",
    "test_daemon.py",
    "test_daemon_deepgram.py",
    "test_esphome_daemon.py",
    "test_esphome_ha.py",
    "test_home_assistant.py",
    "test_home_assistant_real.py",
    "test_install.py",
    "test_preemption.py",
    "test_rooms.py",
    "test_systemd.py",
}


def tier_of(filename: str) -> str:
    if filename in UNIT_FILES:
        return "unit"
    if filename.startswith("test_reliability"):
        return "reliability"
    return "end_to_end" if filename in END_TO_END_FILES else "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(tier_of(item.path.name))


@pytest.fixture(scope="session", autouse=True)
def alsa_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every ALSA client in the test run (this process and the daemons) sees the test PCMs.

    alsa-lib reads $XDG_CONFIG_HOME/alsa/asoundrc; it is set before anything opens ALSA.
    """
    home = tmp_path_factory.mktemp("xdg")
    write_alsa_config(home)
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["XDG_CONFIG_HOME"]
    else:
        os.environ["XDG_CONFIG_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def no_installed_secrets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Herald installed on this machine must not lend the tests its keys."""
    old = os.environ.get("HERALD_CREDENTIALS_DIR")
    os.environ["HERALD_CREDENTIALS_DIR"] = str(tmp_path_factory.mktemp("no-credentials"))
    yield
    if old is None:
        del os.environ["HERALD_CREDENTIALS_DIR"]
    else:
        os.environ["HERALD_CREDENTIALS_DIR"] = old


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    started = Broker(tmp_path_factory.mktemp("mosquitto"))
    started.start()
    yield started
    started.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test, which it may stop and start again."""
    started = Broker(tmp_path)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def capture(tmp_path: Path) -> Capture:
    return Capture(tmp_path / "played.raw")


@pytest.fixture
def node_id() -> str:
    """A node name of this test's own, so tests sharing the broker never hear each other."""
    return f"t{uuid.uuid4().hex[:10]}"


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def make_daemon(
    tmp_path: Path, alsa_config_home: Path, node_id: str, capture: Capture
) -> Iterator[DaemonFactory]:
    started: list[DaemonProcess] = []

    def make(
        broker: Broker,
        extra: str = "",
        device: str | None = None,
        mqtt: str = "",
        as_sent: bool = False,
        node: str | None = None,
    ) -> DaemonProcess:
        """A daemon for this test's node (or for `node`, with a state directory of its own);
        `mqtt`: more lines for its [mqtt] section.

        `as_sent`: every sample plays as the voice or chime made it (no loudness levelling,
        no tail), for the tests that follow the fakes' audio sample by sample.
        """
        sound = "loudness_lufs = 0\ntail_ms = 0\n" if as_sent else ""
        config = write_config(
            tmp_path / f"herald-{len(started)}.toml",
            f'node_id = "{node or node_id}"\n'
            f'state_dir = "{tmp_path / ("state" if node is None else f"state-{node}")}"\n'
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nreconnect_max_s = 1\n'
            + mqtt
            + f'[audio]\ndevice = "{device or capture.device}"\nchimes_dir = "{tmp_path}"\n'
            + sound
            + extra,
        )
        daemon = DaemonProcess(config, daemon_env(alsa_config_home))
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.alive:
            daemon.stop()


@pytest.fixture
def probe(broker: Broker, node_id: str) -> Iterator[MqttProbe]:
    """Listens to this test node's events on the shared broker."""
    listener = MqttProbe(broker, f"herald/{node_id}/events")
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def pulse(alsa_config_home: Path) -> Iterator[PulseServer]:
    """A real-time paced output: ALSA PCM 'herald_paced' plays into a PulseAudio null sink."""
    server = PulseServer(alsa_config_home)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rooms(alsa_config_home: Path) -> Iterator[PulseServer]:
    """Rooms on one clock: ALSA PCM 'herald_room:SINK=roomN' plays into channel N-1 of one
    null sink, `rooms`, recorded with `record(path, "rooms", ROOMS)`."""
    server = PulseServer(alsa_config_home, name="pulse-rooms", sinks=room_sinks())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mpd_server(tmp_path: Path) -> Iterator[MpdServer]:
    """A real MPD on loopback with a null output and a software mixer, at volume 70."""
    server = MpdServer(tmp_path)
    try:
        server.start()
        mpd_command(server.port, "setvol 70")
        yield server
    finally:
        server.stop()


@pytest.fixture
def mpd(mpd_server: MpdServer) -> str:
    """That MPD's address."""
    return mpd_server.address
