"""The daemon as an ESPHome device: aioesphomeapi's client (Home Assistant's) plays a URL with the
announce flag, and it is heard at Herald's ALSA output, with its events on MQTT and the media
player's state following it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import MediaPlayerEntityState, MediaPlayerInfo, MediaPlayerState

from tests.conftest import DaemonFactory
from tests.fake_deepgram import dominant_hz
from tests.support import (
    RATE,
    Broker,
    Capture,
    MediaServer,
    MqttProbe,
    free_port,
    media_server,
    tone_wav,
)

KEY = base64.b64encode(bytes(range(32))).decode()
IDLE = MediaPlayerState.IDLE


@pytest.fixture
def media() -> Iterator[MediaServer]:
    """/tone.wav: 660 Hz for 1.5 s, at 16 kHz (Herald resamples it)."""
    with media_server(tone_wav(660, 1.5, rate=16000)) as server:
        yield server


def test_home_assistant_plays_an_announcement_through_the_esphome_api(
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    capture: Capture,
    media: MediaServer,
    tmp_path: Path,
) -> None:
    port = free_port()
    (tmp_path / "esphome_key").write_text(KEY + "\n")
    daemon = make_daemon(
        broker,
        f"[esphome]\nenabled = true\nport = {port}\nmdns = false\n"
        f'encryption_key_file = "{tmp_path / "esphome_key"}"\n',
        as_sent=True,
    )
    daemon.start(wait_until="esphome: serving the native API")
    assert KEY not in "\n".join(daemon.log_lines)

    async def play() -> list[MediaPlayerState]:
        client = APIClient("127.0.0.1", port, None, noise_psk=KEY, client_info="herald-test")
        await client.connect(login=True)
        try:
            entities, _ = await client.list_entities_services()
            [player] = [e for e in entities if isinstance(e, MediaPlayerInfo)]
            states: list[MediaPlayerState] = []
            idle_again = asyncio.Event()

            def on_state(state: object) -> None:
                if isinstance(state, MediaPlayerEntityState) and state.state is not None:
                    states.append(state.state)
                    if MediaPlayerState.PLAYING in states[:-1] and states[-1] is IDLE:
                        idle_again.set()

            client.subscribe_states(on_state)
            url = f"{media.url}/tone.wav?authSig=s3cret-token"
            client.media_player_command(player.key, media_url=url, announcement=True)
            client.media_player_command(player.key, media_url=f"{media.url}/missing.wav")
            await asyncio.wait_for(idle_again.wait(), 20)
            return states
        finally:
            await client.disconnect()

    states = asyncio.run(play())
    assert states[:3] == [IDLE, MediaPlayerState.PLAYING, IDLE], states

    events = probe.events_until(
        lambda got: sum(e["event"] in ("finished", "failed") for e in got) >= 2, timeout=20
    )
    assert all(e.get("source") == "esphome" for e in events), events
    announced, missing = (e for e in events if e["event"] == "queued")
    assert announced["priority"] == "high" and missing["priority"] == "normal"
    finished = next(e for e in events if e["event"] == "finished")
    assert finished["id"] == announced["id"] and finished["voice"] == "media"
    failed = next(e for e in events if e["event"] == "failed")
    assert failed["id"] == missing["id"] and "404" in failed["reason"]
    log = "\n".join(daemon.log_lines)
    assert "s3cret-token" not in log and "s3cret-token" not in str(events)

    heard = capture.samples()
    loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > 2000)
    assert len(loud), "nothing was heard"
    sound = heard[loud[0] : loud[-1]]
    assert abs(len(sound) / RATE - 1.5) < 0.05, len(sound) / RATE
    assert abs(dominant_hz(sound, RATE) - 660) < 5


def test_a_taken_port_or_a_bad_key_costs_the_esphome_api_not_the_daemon(
    broker: Broker, make_daemon: DaemonFactory, probe: MqttProbe, node_id: str, tmp_path: Path
) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))  # noqa: S104 (where Herald listens: every interface)
    taken.listen()
    port = taken.getsockname()[1]
    try:
        daemon = make_daemon(
            broker, f"[esphome]\nenabled = true\nport = {port}\nmdns = false\n", as_sent=True
        )
        daemon.start(wait_until="herald: ready")
        probe.publish(f"herald/{node_id}/say", "Still speaking.")
        assert probe.events_until(lambda got: any(e["event"] == "finished" for e in got))
        daemon.stop()
    finally:
        taken.close()
    log = "\n".join(daemon.log_lines)
    assert f"esphome: not served: cannot listen on port {port}" in log
    assert "Traceback" not in log

    (tmp_path / "bad_key").write_text("c2hvcnQ=\n")  # base64, 5 bytes
    daemon = make_daemon(
        broker,
        f"[esphome]\nenabled = true\nport = {free_port()}\nmdns = false\n"
        f'encryption_key_file = "{tmp_path / "bad_key"}"\n',
        as_sent=True,
    )
    daemon.start(wait_until="herald: ready")
    daemon.stop()
    log = "\n".join(daemon.log_lines)
    assert "esphome: not served: config error: the ESPHome encryption key from file" in log
    assert "5 bytes, not 32" in log and "c2hvcnQ" not in log and "Traceback" not in log
