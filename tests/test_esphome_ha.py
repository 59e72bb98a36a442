"""Herald in a real Home Assistant as an ESPHome device: added through the ESPHome integration's
config flow (plaintext, and with an encryption key), its media player listed with
announcements, and `media_player.play_media` with `announce: true` heard at Herald's output.

Home Assistant (tests/debian13/home-assistant.version, with the aioesphomeapi it pins) runs from
the Debian 13 root in this machine's network namespace: it connects to Herald's API on
loopback, hands Herald a URL of its own ffmpeg proxy (on loopback: its internal URL), and that
proxy's ffmpeg fetches the tone from this test's HTTP server (on loopback) and converts it to
the WAV format Herald asked for. Nothing but Home Assistant talks to Herald's API.

Not tested here: `tts.speak`. Home Assistant has no text-to-speech engine that works offline
(Piper and the cloud engines need a download or the internet), and the tests have neither.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DaemonFactory
from tests.fake_deepgram import dominant_hz
from tests.home_assistant import HomeAssistant, HomeAssistantError
from tests.support import (
    RATE,
    Broker,
    Capture,
    MediaServer,
    MqttProbe,
    PulseServer,
    free_port,
    media_server,
    tone_wav,
    wait_for,
)

pytestmark = pytest.mark.xdist_group("home_assistant")  # one Home Assistant at a time

PACED = "herald_paced"  # real time: an announcement lasts as long as it is heard
TONE_HZ, TONE_S = 660, 1.5
KEY = base64.b64encode(bytes(range(100, 132))).decode()

# Home Assistant's MediaPlayerEntityFeature bits.
PAUSE, VOLUME_SET, VOLUME_MUTE, PLAY_MEDIA, STOP = 1, 4, 8, 512, 4096
MEDIA_ANNOUNCE = 1048576
HERALDS_FEATURES = PLAY_MEDIA | MEDIA_ANNOUNCE | STOP | VOLUME_SET | VOLUME_MUTE
COMPLAINT = r"(WARNING|ERROR) .*\[(homeassistant\.components\.esphome|aioesphomeapi)"


@pytest.fixture
def media() -> Iterator[MediaServer]:
    """The tone, at 16 kHz: not Herald's rate, so the proxy has something to convert."""
    with media_server(tone_wav(TONE_HZ, TONE_S, rate=16000)) as server:
        yield server


@pytest.fixture(scope="module")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(tmp_path_factory.mktemp("home-assistant"))
    # An ESPHome media player is handed a URL of Home Assistant's own proxy, made from its
    # internal URL: this Home Assistant serves on loopback only, so that is where it is.
    ha.configure(
        homeassistant={"internal_url": ha.url},
        logs={"homeassistant.components.esphome": "debug", "aioesphomeapi": "info"},
    )
    ha.start()
    yield ha
    ha.stop()


class EsphomeEntries:
    """The ESPHome config entries a test added; deleted before its Herald stops, so that Home
    Assistant does not go on trying to reconnect to it."""

    def __init__(self, ha: HomeAssistant) -> None:
        self.ha = ha
        self.ids: list[str] = []
        self.log_mark = len(ha.log())

    def add(self, port: int, key: str | None = None) -> dict[str, Any]:
        entry = self.ha.add_esphome("127.0.0.1", port, key)
        self.ids.append(entry["entry_id"])
        # With a device that has a key, the flow's probes log warnings by design: it tries
        # plaintext, then an all-zero key to learn the device's name from its refusal.
        self.log_mark = len(self.ha.log())
        return entry

    def complaints(self) -> list[str]:
        """Home Assistant's warnings and errors from its ESPHome integration or aioesphomeapi
        (a traceback's first line) since the device was added."""
        return [
            line
            for line in self.ha.log()[self.log_mark :].splitlines()
            if re.search(COMPLAINT, line)
        ]


@pytest.fixture
def entries(home_assistant: HomeAssistant, make_daemon: DaemonFactory) -> Iterator[EsphomeEntries]:
    # (make_daemon: set up before, so torn down after; the entries go while Herald still runs.)
    added = EsphomeEntries(home_assistant)
    yield added
    for entry_id in added.ids:
        home_assistant.remove_entry(entry_id)


def media_player_of(ha: HomeAssistant, node_id: str) -> str:
    """The entity id of the media player Home Assistant made for this test's Herald. It is
    the device's one entity, so its id and name are the device's: `Herald <node_id>`."""
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        found[:] = [
            state
            for state in ha.states()
            if state["entity_id"].startswith(f"media_player.herald_{node_id}")
        ]
        return bool(found)

    wait_for(listed, 20, f"Home Assistant to list a media player of Herald {node_id}")
    shown = [(state["entity_id"], state["attributes"].get("friendly_name")) for state in found]
    assert shown == [(f"media_player.herald_{node_id}", f"Herald {node_id}")], shown
    return f"media_player.herald_{node_id}"


def esphome_herald(make_daemon: DaemonFactory, broker: Broker, extra: str = "", **kw: Any) -> int:
    """Start a Herald serving the ESPHome API (no mDNS) on a port of its own; the port."""
    port = free_port()
    daemon = make_daemon(
        broker, f"[esphome]\nenabled = true\nport = {port}\nmdns = false\n{extra}", **kw
    )
    daemon.start(wait_until="esphome: serving the native API")
    return port


def announce_tone(ha: HomeAssistant, player: str, media: MediaServer) -> None:
    """What an automation does: `media_player.play_media` of the tone, as an announcement."""
    ha.call(
        "media_player",
        "play_media",
        entity_id=player,
        media_content_id=f"{media.url}/tone.wav",
        media_content_type="music",
        announce=True,
    )


def heard_through_esphome(probe: MqttProbe) -> list[dict[str, Any]]:
    """Herald's events for the announcement, once it has ended: spoken to the end, and from
    the ESPHome API."""
    events = probe.events_until(
        lambda got: any(e["event"] in ("finished", "failed") for e in got), timeout=30
    )
    assert [e["event"] for e in events] == ["queued", "started", "finished"], events
    assert all(e.get("source") == "esphome" for e in events), events
    return events


def test_home_assistant_adds_herald_and_its_announcement_is_heard(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    capture: Capture,
    media: MediaServer,
    entries: EsphomeEntries,
    node_id: str,
) -> None:
    port = esphome_herald(make_daemon, broker, as_sent=True)

    entry = entries.add(port)
    assert entry["title"] == f"Herald {node_id}", entry
    player = media_player_of(home_assistant, node_id)
    state = home_assistant.wait_state(player, "idle", volume_level=1.0, is_volume_muted=False)
    features = state["attributes"]["supported_features"]
    assert features & HERALDS_FEATURES == HERALDS_FEATURES, features
    assert not features & PAUSE, features

    announce_tone(home_assistant, player, media)
    events = heard_through_esphome(probe)
    assert events[0]["priority"] == "high"  # with the announce flag
    # Herald fetched it from Home Assistant's ffmpeg proxy, and only ffmpeg fetched the tone.
    assert len(media.user_agents) == 1 and "Lavf" in media.user_agents[0]

    heard = capture.samples()
    loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > 2000)
    assert len(loud), "nothing was heard"
    sound = heard[loud[0] : loud[-1]]
    assert abs(len(sound) / RATE - TONE_S) < 0.05, len(sound) / RATE
    assert abs(dominant_hz(sound, RATE) - TONE_HZ) < 5

    home_assistant.wait_state(player, "idle")
    assert not entries.complaints(), entries.complaints()


def test_with_a_key_home_assistant_asks_for_it_and_shows_the_announcement_playing(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    pulse: PulseServer,
    media: MediaServer,
    entries: EsphomeEntries,
    node_id: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "esphome_key").write_text(KEY + "\n")
    port = esphome_herald(
        make_daemon,
        broker,
        f'encryption_key_file = "{tmp_path / "esphome_key"}"\n',
        device=PACED,
    )

    # The flow stops at the key, naming the device as Herald told it while refusing the
    # flow's probe with a wrong key.
    with pytest.raises(HomeAssistantError, match=f"asks for a key.*'name': 'herald-{node_id}'"):
        entries.add(port)
    entries.add(port, KEY)
    player = media_player_of(home_assistant, node_id)
    home_assistant.wait_state(player, "idle")

    home_assistant.call("media_player", "volume_set", entity_id=player, volume_level=0.5)
    home_assistant.wait_state(player, "idle", volume_level=0.5)
    status = MqttProbe(broker, f"herald/{node_id}/status")  # Herald's volume is the one set
    try:
        status.events_until(lambda got: bool(got) and got[-1]["volume"] == 0.5, timeout=10)
    finally:
        status.close()

    announce_tone(home_assistant, player, media)
    # Played in real time, the announcement is seen in Home Assistant while it is heard.
    home_assistant.wait_state(player, "playing", timeout=10)
    heard_through_esphome(probe)
    home_assistant.wait_state(player, "idle")
    assert not entries.complaints(), entries.complaints()
