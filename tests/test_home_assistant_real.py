"""Herald in a real Home Assistant: discovery, every entity's states, every action through it.

Home Assistant (the version in tests/debian13/home-assistant.version) runs from the Debian 13
root, with its MQTT integration added through its own config flow against the tests' mosquitto.
Nothing here publishes to Herald's command topics: every action is a Home Assistant service
call, and what Herald did is read from its events and from Home Assistant's states.
"""

from __future__ import annotations

import json
import re
import signal
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from herald.status import STATES
from tests.conftest import DaemonFactory
from tests.home_assistant import HomeAssistant, entity_ids
from tests.support import Broker, MqttProbe, PulseServer, got, settled, wait_for

pytestmark = pytest.mark.xdist_group("home_assistant")  # one Home Assistant for the module

PACED = "herald_paced"  # real time: an announcement lasts as long as it is heard
UNPLUGGED = "herald_unplugged"  # no such PCM: the speaker is not there
LONG_TEXT = "This announcement goes on for a while, so that it can be seen speaking. " * 2


@pytest.fixture(scope="module")
def home_assistant(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(tmp_path_factory.mktemp("home-assistant"))
    ha.start()
    ha.add_mqtt(broker)
    yield ha
    ha.stop()
    complaints = mqtt_complaints(ha.log())
    assert not complaints, f"Home Assistant refused what Herald published: {complaints}"


def mqtt_complaints(log: str) -> list[str]:
    """Home Assistant's warnings and errors about what it got over MQTT from Herald."""
    return [
        line
        for line in log.splitlines()
        if re.search(r"(WARNING|ERROR).*homeassistant\.components\.mqtt", line)
        and "herald" in line.lower()
    ]


def status_of(broker: Broker, node_id: str) -> dict[str, Any]:
    probe = MqttProbe(broker, f"herald/{node_id}/status")
    try:
        status: dict[str, Any] = json.loads(probe.messages.get(timeout=10)[1])
        return status
    finally:
        probe.close()


def announce(ha: HomeAssistant, ids: dict[str, str], text: str, **fields: Any) -> None:
    """notify.send_message to Herald's Announce entity: the text, or Herald's JSON payload
    when there are more fields (an id, a chime...)."""
    message = json.dumps({"text": text, **fields}) if fields else text
    ha.call("notify", "send_message", entity_id=ids["announce"], message=message)


def herald_seen_idle(
    ha: HomeAssistant, make_daemon: DaemonFactory, broker: Broker, node_id: str, **device: str
) -> dict[str, str]:
    """Start a Herald (on `device=...`, if given) and wait until Home Assistant shows it idle;
    its entity ids."""
    make_daemon(broker, **device).start(wait_until="herald: ready")
    ids = entity_ids(node_id)
    ha.wait_state(ids["state"], "idle")
    return ids


def test_discovery_brings_every_entity_with_its_state(
    home_assistant: HomeAssistant, broker: Broker, make_daemon: DaemonFactory, node_id: str
) -> None:
    make_daemon(broker).start(wait_until="herald: ready")
    ids = entity_ids(node_id)

    state = home_assistant.wait_state(ids["state"], "idle", current=None, audio_problem=None)
    assert state["attributes"]["options"] == list(STATES)
    assert state["attributes"]["device_class"] == "enum"
    home_assistant.wait_state(ids["queue_length"], "0")
    home_assistant.wait_state(ids["volume"], "1.0")
    home_assistant.wait_state(ids["quiet"], "off")
    home_assistant.wait_state(ids["alert"], "off")
    home_assistant.wait_state(ids["voice"], "espeak ready")
    for key in ("announce", "stop", "last"):
        shown = home_assistant.state(ids[key])
        assert shown is not None and shown["state"] != "unavailable", (key, shown)
    alert = home_assistant.state(ids["alert"])
    assert alert is not None and alert["attributes"]["available_tones"] == [
        "alarm",
        "alert",
        "bell",
    ]


def test_notify_send_message_is_spoken_and_becomes_the_last_announcement(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    ids = herald_seen_idle(home_assistant, make_daemon, broker, node_id)

    announce(home_assistant, ids, "The washing is done.")
    events = probe.events_until(lambda ev: any(e["event"] == "finished" for e in ev))
    assert [e["event"] for e in events] == ["queued", "started", "finished"]
    home_assistant.wait_state(ids["last"], "The washing is done.", event="finished")

    # Herald's JSON payload through the same action: its fields are honoured.
    announce(home_assistant, ids, "Dinner is ready.", id="dinner", priority="high")
    events = probe.events_until(got("finished", "dinner"))
    assert next(e for e in events if e["event"] == "queued")["priority"] == "high"
    home_assistant.wait_state(ids["last"], "Dinner is ready.", id="dinner", event="finished")


def test_the_state_follows_speaking_and_stop_silences_it(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    pulse: PulseServer,
) -> None:
    ids = herald_seen_idle(home_assistant, make_daemon, broker, node_id, device=PACED)

    announce(home_assistant, ids, LONG_TEXT, id="long")
    probe.events_until(got("started", "long"))
    home_assistant.wait_state(ids["state"], "speaking", current="long")

    home_assistant.call("button", "press", entity_id=ids["stop"])
    events = probe.events_until(settled(["long"]))
    assert events[-1]["event"] == "dropped" and events[-1]["id"] == "long", events[-1]
    home_assistant.wait_state(ids["state"], "idle", current=None)
    # Stopped halfway, it is still the last announcement, with what became of it.
    home_assistant.wait_state(ids["last"], LONG_TEXT[:255].strip(), id="long", event="dropped")


def test_an_announcement_stopped_during_its_chime_is_still_the_last_one(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    pulse: PulseServer,
    tmp_path: Path,
) -> None:
    chime = tmp_path / "long-chime.wav"
    write_tone(chime, seconds=6.0)
    ids = herald_seen_idle(home_assistant, make_daemon, broker, node_id, device=PACED)

    announce(home_assistant, ids, "Cut short.", id="chimed", chime=str(chime))
    home_assistant.wait_state(ids["state"], "speaking", current="chimed")
    home_assistant.call("button", "press", entity_id=ids["stop"])
    events = probe.events_until(settled(["chimed"]))
    assert [e["event"] for e in events] == ["queued", "dropped"]  # never got to its words
    home_assistant.wait_state(ids["last"], "Cut short.", id="chimed", event="dropped")


def write_tone(path: Path, seconds: float, rate: int = 48000) -> None:
    """A quiet 440 Hz tone as a 16-bit mono WAV file."""
    frames = np.arange(int(seconds * rate))
    samples = (3000 * np.sin(2 * np.pi * 440 * frames / rate)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def test_the_siren_speaks_the_alert_with_the_tone_and_volume_home_assistant_sends(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
    pulse: PulseServer,
) -> None:
    make_daemon(broker, device=PACED).start(wait_until="herald: ready")
    ids = entity_ids(node_id)
    home_assistant.wait_state(ids["alert"], "off")
    commands = MqttProbe(broker, f"herald/{node_id}/siren/set")
    try:
        home_assistant.call(
            "siren", "turn_on", entity_id=ids["alert"], tone="bell", volume_level=0.5
        )
        events = probe.events_until(got("started", "siren"))
        queued = next(e for e in events if e["event"] == "queued")
        assert queued["priority"] == "critical"
        home_assistant.wait_state(ids["alert"], "on")
        home_assistant.wait_state(ids["state"], "speaking", current="siren")
        sent = json.loads(commands.messages.get(timeout=5)[1])
        assert sent == {"state": "ON", "tone": "bell", "volume_level": 0.5}

        home_assistant.call("siren", "turn_off", entity_id=ids["alert"])
        events = probe.events_until(settled(["siren"]))
        assert events[-1]["event"] == "dropped", events[-1]
        assert json.loads(commands.messages.get(timeout=5)[1]) == {"state": "OFF"}
    finally:
        commands.close()
    home_assistant.wait_state(ids["alert"], "off")
    home_assistant.wait_state(ids["state"], "idle")


def test_volume_and_quiet_mode_are_set_through_home_assistant(
    home_assistant: HomeAssistant, broker: Broker, make_daemon: DaemonFactory, node_id: str
) -> None:
    ids = herald_seen_idle(home_assistant, make_daemon, broker, node_id)
    home_assistant.wait_state(ids["volume"], "1.0")

    home_assistant.call("number", "set_value", entity_id=ids["volume"], value=0.35)
    home_assistant.wait_state(ids["volume"], "0.35")
    wait_for(lambda: status_of(broker, node_id)["volume"] == 0.35, 10, "Herald's volume 0.35")

    home_assistant.call("switch", "turn_on", entity_id=ids["quiet"])
    home_assistant.wait_state(ids["quiet"], "on")
    assert status_of(broker, node_id)["quiet"] is True
    home_assistant.call("switch", "turn_off", entity_id=ids["quiet"])
    home_assistant.wait_state(ids["quiet"], "off")
    assert status_of(broker, node_id)["quiet"] is False


def test_waiting_for_a_missing_speaker_shows_in_home_assistant(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    """The speaker is missing from the start: an announcement waits, and Home Assistant shows
    that it waits and what for (an enum state it accepts, the device's problem as attribute)."""
    daemon = make_daemon(broker, device=UNPLUGGED)
    daemon.start()
    daemon.wait_for_log(f"cannot open ALSA device '{UNPLUGGED}'")
    ids = entity_ids(node_id)
    idle = home_assistant.wait_state(ids["state"], "idle")
    assert UNPLUGGED in (idle["attributes"]["audio_problem"] or ""), idle

    announce(home_assistant, ids, "Is anybody there?", id="unheard")
    probe.events_until(got("queued", "unheard"))
    waiting = home_assistant.wait_state(ids["state"], "waiting_for_audio", current="unheard")
    assert UNPLUGGED in waiting["attributes"]["audio_problem"], waiting
    assert not mqtt_complaints(home_assistant.log())


def test_herald_killed_is_unavailable_and_comes_back_with_its_last_announcement(
    home_assistant: HomeAssistant,
    broker: Broker,
    make_daemon: DaemonFactory,
    probe: MqttProbe,
    node_id: str,
) -> None:
    daemon = make_daemon(broker)
    daemon.start(wait_until="herald: ready")
    ids = entity_ids(node_id)
    home_assistant.wait_state(ids["state"], "idle")
    announce(home_assistant, ids, "Remember me.", id="remembered")
    probe.events_until(got("finished", "remembered"))
    home_assistant.wait_state(ids["last"], "Remember me.", id="remembered")

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGKILL)  # the broker publishes its will: offline
    daemon.process.wait(10)
    for key in ("state", "announce", "alert", "volume", "last"):
        home_assistant.wait_state(ids[key], "unavailable")

    make_daemon(broker).start(wait_until="herald: ready")
    home_assistant.wait_state(ids["state"], "idle")
    # (Home Assistant keeps a sensor's state when a template renders it empty: Herald's own
    # status must carry the last announcement, not only Home Assistant's memory of it.)
    wait_for(
        lambda: (status_of(broker, node_id)["last"] or {}).get("text") == "Remember me.",
        10,
        "the restarted Herald's status to name its last announcement",
    )
    home_assistant.wait_state(ids["last"], "Remember me.", id="remembered", event="finished")


def test_a_home_assistant_restart_finds_herald_again(
    broker: Broker,
    make_daemon: DaemonFactory,
    node_id: str,
    tmp_path: Path,
) -> None:
    """Home Assistant's birth message (`online` on homeassistant/status) makes Herald publish
    its discovery again: a Home Assistant that lost the retained configs finds it all the same."""
    ha = HomeAssistant(tmp_path / "home-assistant")
    ha.start()
    try:
        ha.add_mqtt(broker)
        daemon = make_daemon(broker)
        daemon.start(wait_until="herald: ready")
        ids = entity_ids(node_id)
        ha.wait_state(ids["state"], "idle")

        ha.stop()
        remover = MqttProbe(broker)  # the retained configs go: only the birth can bring them
        configs = MqttProbe(broker, f"homeassistant/+/herald_{node_id}/+/config")
        try:
            retained: list[str] = []
            while len(retained) < len(ids):
                retained.append(configs.messages.get(timeout=10)[0])
            for topic in retained:
                remover.publish(topic, "", qos=1)
        finally:
            remover.close()
            configs.close()
        birth = "home assistant is online: publishing discovery again"
        births = sum(birth in line for line in daemon.log_lines)

        ha.start()
        wait_for(
            lambda: sum(birth in line for line in daemon.log_lines) > births,
            30,
            "Herald to hear Home Assistant's birth message",
        )
        for key in ("state", "queue_length", "volume", "quiet", "alert"):
            shown = ha.wait_state(ids[key], ha_idle_state(key))
            assert shown["state"] != "unavailable"
    finally:
        ha.stop()
    assert not mqtt_complaints(ha.log())


def ha_idle_state(key: str) -> str:
    return {"state": "idle", "queue_length": "0", "volume": "1.0", "quiet": "off", "alert": "off"}[
        key
    ]
