"""Home Assistant MQTT discovery: topics, documented keys, one device, Herald's own topics."""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herald.commands import SIREN_TONES
from herald.mqtt.discovery import (
    LAST_ATTRIBUTES_TEMPLATE,
    MAX_STATE_LENGTH,
    SIREN_ID,
    NodeInfo,
    availability_topic,
    discovery_messages,
    discovery_slug,
    ha_status_topic,
    removal_messages,
    status_topic,
)
from herald.mqtt.topics import Topics

# The configuration variables Home Assistant documents, per platform, as of 2025.10 (when
# `default_entity_id` replaced the deprecated `object_id`). Sources: the "Configuration
# variables" of https://www.home-assistant.io/integrations/<platform>.mqtt/ for notify, siren,
# button, number, switch and sensor, cross-checked with each platform's PLATFORM_SCHEMA_MODERN
# in home-assistant/core homeassistant/components/mqtt/<platform>.py. `platform` is left out:
# it belongs to device-based discovery only.
COMMON_KEYS = frozenset(
    {
        # MQTT_AVAILABILITY_SCHEMA (mqtt/schemas.py) and "Using availability topics"
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        # MQTT_ENTITY_COMMON_SCHEMA (mqtt/schemas.py); `origin` is documented on the MQTT page
        "default_entity_id",
        "device",
        "origin",
        "enabled_by_default",
        "entity_category",
        "entity_picture",
        "icon",
        "json_attributes_template",
        "json_attributes_topic",
        "name",
        "unique_id",
        # MQTT_BASE_SCHEMA (mqtt/config.py)
        "qos",
        "encoding",
    }
)
PLATFORM_KEYS = {
    "notify": frozenset({"command_template", "command_topic", "retain"}),
    "siren": frozenset(
        {
            "available_tones",
            "command_template",
            "command_off_template",
            "command_topic",
            "optimistic",
            "payload_off",
            "payload_on",
            "retain",
            "state_off",
            "state_on",
            "state_topic",
            "state_value_template",
            "support_duration",
            "support_volume_set",
        }
    ),
    "button": frozenset(
        {"command_template", "command_topic", "device_class", "payload_press", "retain"}
    ),
    "number": frozenset(
        {
            "command_template",
            "command_topic",
            "device_class",
            "max",
            "min",
            "mode",
            "optimistic",
            "payload_reset",
            "retain",
            "state_topic",
            "step",
            "unit_of_measurement",
            "value_template",
        }
    ),
    "switch": frozenset(
        {
            "command_template",
            "command_topic",
            "device_class",
            "optimistic",
            "payload_off",
            "payload_on",
            "retain",
            "state_off",
            "state_on",
            "state_topic",
            "value_template",
        }
    ),
    "sensor": frozenset(
        {
            "device_class",
            "expire_after",
            "force_update",
            "last_reset_value_template",
            "options",
            "state_class",
            "state_topic",
            "suggested_display_precision",
            "unit_of_measurement",
            "value_template",
        }
    ),
}
# The `device` map (MQTT_ENTITY_DEVICE_INFO_SCHEMA; "device" on every platform page), the
# `origin` map (MQTT_ORIGIN_INFO_SCHEMA; the MQTT page's origin section) and one entry of
# the `availability` list (MQTT_AVAILABILITY_LIST_SCHEMA).
DEVICE_KEYS = frozenset(
    {
        "configuration_url",
        "connections",
        "hw_version",
        "identifiers",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "serial_number",
        "suggested_area",
        "sw_version",
        "via_device",
    }
)
ORIGIN_KEYS = frozenset({"name", "sw_version", "support_url"})
AVAILABILITY_KEYS = frozenset(
    {"topic", "payload_available", "payload_not_available", "value_template"}
)

# The abbreviations of the keys Herald could use ("Supported abbreviations in MQTT discovery
# messages" on the MQTT page; mqtt/abbreviations.py). Herald writes the full names only.
ABBREVIATIONS = {
    "av_tones": "available_tones",
    "avty": "availability",
    "avty_t": "availability_topic",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "cmd_off_tpl": "command_off_template",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "ent_cat": "entity_category",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "o": "origin",
    "obj_id": "object_id",
    "ops": "options",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_prs": "payload_press",
    "stat_cla": "state_class",
    "stat_off": "state_off",
    "stat_on": "state_on",
    "stat_t": "state_topic",
    "stat_val_tpl": "state_value_template",
    "sup_dur": "support_duration",
    "sup_vol": "support_volume_set",
    "t": "topic",
    "uniq_id": "unique_id",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {"ids": "identifiers", "mf": "manufacturer", "mdl": "model"}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}

# homeassistant/components/mqtt/discovery.py, applied after the prefix and its "/" are cut off
HA_TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)
ENTITY_ID = re.compile(r"^(?P<domain>[a-z0-9_]+)\.(?P<object>[a-z0-9_]+)$")

KITCHEN = NodeInfo(node_id="kitchen", base_topic="herald", name="", sw_version="1.2.3")

EXPECTED = {  # (component, object_id in the topic) -> name
    ("notify", "notify"): "Announce",
    ("siren", "siren"): "Alert",
    ("button", "stop"): "Stop",
    ("number", "volume"): "Volume",
    ("switch", "quiet"): "Quiet mode",
    ("sensor", "state"): "State",
    ("sensor", "queue_length"): "Queue length",
    ("sensor", "last_announcement"): "Last announcement",
    ("sensor", "voice"): "Voice",
}


def configs(node: NodeInfo = KITCHEN) -> dict[tuple[str, str], dict[str, Any]]:
    """(component, object_id) -> the parsed config, checking each topic on the way."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for topic, payload in discovery_messages(node):
        prefix = f"{node.discovery_prefix}/"
        assert topic.startswith(prefix), topic
        match = HA_TOPIC_MATCHER.fullmatch(topic.removeprefix(prefix))
        assert match is not None, topic
        assert match["node_id"] == f"herald_{discovery_slug(node.node_id)}"
        config = json.loads(payload)
        assert isinstance(config, dict)
        key = (match["component"], match["object_id"])
        assert key not in found, topic
        found[key] = config
    return found


def templates(config: dict[str, Any]) -> dict[str, str]:
    return {key: value for key, value in config.items() if key.endswith("_template")}


def test_one_config_per_entity_on_a_discovery_topic() -> None:
    found = configs()
    assert {key: config["name"] for key, config in found.items()} == EXPECTED
    topics = [topic for topic, _ in discovery_messages(KITCHEN)]
    assert "homeassistant/number/herald_kitchen/volume/config" in topics
    assert all(re.fullmatch(r"homeassistant/\w+/herald_kitchen/\w+/config", t) for t in topics)


def test_every_key_is_documented_for_its_platform() -> None:
    for (component, _), config in configs().items():
        assert set(config) <= COMMON_KEYS | PLATFORM_KEYS[component], component
        assert set(config["device"]) <= DEVICE_KEYS
        assert set(config["origin"]) <= ORIGIN_KEYS and "name" in config["origin"]
        for entry in config["availability"]:
            assert set(entry) <= AVAILABILITY_KEYS and "topic" in entry


def test_keys_are_written_in_full_and_deprecated_ones_are_not_used() -> None:
    for config in configs().values():
        assert not set(config) & set(ABBREVIATIONS)
        assert not set(config["device"]) & set(DEVICE_ABBREVIATIONS)
        assert not set(config["origin"]) & set(ORIGIN_ABBREVIATIONS)
        assert "object_id" not in config  # deprecated in 2025.10 for default_entity_id
        assert "has_entity_name" not in config  # not an option: always true for MQTT entities


def test_unique_ids_and_entity_ids_are_stable_distinct_and_derived_from_the_node() -> None:
    found = configs()
    unique_ids = [config["unique_id"] for config in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    assert all(uid.startswith("herald_kitchen_") for uid in unique_ids)
    assert found["notify", "notify"]["unique_id"] == "herald_kitchen_notify"
    entity_ids = [config["default_entity_id"] for config in found.values()]
    assert len(set(entity_ids)) == len(entity_ids)
    for (component, _), config in found.items():
        match = ENTITY_ID.fullmatch(config["default_entity_id"])
        assert match is not None and match["domain"] == component  # "domain.object", not bare
    assert found["number", "volume"]["default_entity_id"] == "number.herald_kitchen_volume"
    assert found["switch", "quiet"]["default_entity_id"] == "switch.herald_kitchen_quiet_mode"
    assert configs() == found  # the same input gives the same retained configs


def test_every_entity_shares_one_device_origin_and_availability() -> None:
    found = list(configs().values())
    device = {
        "identifiers": ["herald_kitchen"],
        "name": "Herald kitchen",
        "manufacturer": "Herald",
        "model": "Herald speaker",
        "sw_version": "1.2.3",
    }
    availability = [
        {
            "topic": "herald/kitchen/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    for config in found:
        assert config["device"] == device
        assert config["origin"] == {"name": "Herald", "sw_version": "1.2.3"}
        assert config["availability"] == availability
        assert config["qos"] == 1
        assert config.get("retain", False) is False  # commands are never retained


def test_commands_and_state_use_heralds_topic_tree() -> None:
    found, topics = configs(), Topics("herald", "kitchen")
    commands = {key: config.get("command_topic") for key, config in found.items()}
    assert commands == {
        ("notify", "notify"): "herald/kitchen/say",
        ("siren", "siren"): "herald/kitchen/siren/set",
        ("button", "stop"): "herald/kitchen/stop",
        ("number", "volume"): "herald/kitchen/volume/set",
        ("switch", "quiet"): "herald/kitchen/quiet/set",
        ("sensor", "state"): None,
        ("sensor", "queue_length"): None,
        ("sensor", "last_announcement"): None,
        ("sensor", "voice"): None,
    }
    assert {c for c in commands.values() if c} <= set(topics.subscriptions())
    assert not templates(found["notify", "notify"])  # the message text is published as it is
    assert found["button", "stop"]["payload_press"] == "stop"
    for key, config in found.items():
        if key[0] not in ("notify", "button"):
            assert config["state_topic"] == "herald/kitchen/status" == topics.status
    last = found["sensor", "last_announcement"]
    assert last["json_attributes_topic"] == status_topic(KITCHEN)
    assert availability_topic(KITCHEN) == topics.availability
    assert ha_status_topic(KITCHEN) == "homeassistant/status"


def test_controls_and_sensors_follow_home_assistants_rules() -> None:
    found = configs()
    volume = found["number", "volume"]
    assert (volume["min"], volume["max"], volume["step"], volume["mode"]) == (0, 1, 0.05, "slider")
    assert volume["step"] >= 0.001  # number.mqtt: "Smallest value 0.001"
    quiet = found["switch", "quiet"]
    assert (quiet["payload_on"], quiet["payload_off"]) == ("ON", "OFF")
    assert (quiet["state_on"], quiet["state_off"]) == ("ON", "OFF")
    state = found["sensor", "state"]
    assert state["device_class"] == "enum"
    assert state["options"] == ["idle", "speaking", "waiting_for_audio"]
    for (component, _), config in found.items():
        if component == "sensor":
            # sensor.mqtt: `options` needs device_class enum and excludes state_class and unit
            if "options" in config:
                assert "state_class" not in config and "unit_of_measurement" not in config
            assert config.get("entity_category", "diagnostic") == "diagnostic"
    assert found["sensor", "queue_length"]["state_class"] == "measurement"
    assert found["sensor", "voice"]["entity_category"] == "diagnostic"


def test_the_siren_publishes_home_assistants_default_json_on_its_own_topic() -> None:
    siren = configs()["siren", "siren"]
    # No command templates: HA publishes {"state": "ON", "tone": ..., "volume_level": ...}
    # on turn_on and {"state": "OFF"} on turn_off (mqtt/siren.py, siren.mqtt command_topic).
    assert "command_template" not in siren and "command_off_template" not in siren
    assert (siren["payload_on"], siren["payload_off"]) == ("ON", "OFF")
    assert siren["available_tones"] == list(SIREN_TONES) == ["alarm", "alert", "bell"]
    assert siren["support_volume_set"] is True and siren["support_duration"] is False
    assert f"'{SIREN_ID}'" in siren["state_value_template"]


def test_removal_empties_the_same_topics() -> None:
    topics = [topic for topic, _ in discovery_messages(KITCHEN)]
    assert removal_messages(KITCHEN) == [(topic, "") for topic in topics]


def test_a_node_id_with_dots_and_capitals_is_made_a_slug_only_where_it_must_be() -> None:
    node = NodeInfo("Kitchen.Pi-2", "house/herald", "Küche", "0.1.0", discovery_prefix="ha")
    found = configs(node)  # checks the topics against Home Assistant's matcher
    notify = found["notify", "notify"]
    assert notify["unique_id"] == "herald_kitchen_pi_2_notify"
    assert notify["default_entity_id"] == "notify.herald_kitchen_pi_2_announce"
    assert notify["command_topic"] == "house/herald/Kitchen.Pi-2/say"
    assert notify["device"]["name"] == "Küche"
    assert notify["device"]["identifiers"] == ["herald_kitchen_pi_2"]
    assert notify["availability"][0]["topic"] == "house/herald/Kitchen.Pi-2/availability"
    assert all(topic.startswith("ha/") for topic, _ in discovery_messages(node))
    assert ha_status_topic(node) == "ha/status"
    assert "Küche" in discovery_messages(node)[0][1]  # UTF-8, not \u escapes


def test_a_node_id_without_letters_or_digits_is_refused() -> None:
    with pytest.raises(ValueError, match="no letters or digits"):
        discovery_messages(NodeInfo("-.-", "herald", "", "1"))


# --- templates --------------------------------------------------------------------------------


def _delimiters_balance(template: str) -> bool:
    """Every `{{`/`{%` closes with its `}}`/`%}`; braces and quotes inside are balanced."""
    i, closer = 0, {"{{": "}}", "{%": "%}"}
    while i < len(template):
        opener = template[i : i + 2]
        if opener not in closer:
            if template[i] in "{}":
                return False  # a stray brace outside any tag
            i += 1
            continue
        i, depth, quote = i + 2, 0, ""
        while True:
            if i >= len(template):
                return False
            char = template[i]
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif depth == 0 and template[i : i + 2] == closer[opener]:
                i += 2
                break
            elif char in "{([":
                depth += 1
            elif char in "})]":
                depth -= 1
                if depth < 0:
                    return False
            i += 1
    return True


def test_the_delimiter_check_catches_what_it_should() -> None:
    assert _delimiters_balance("{{ {'a': 1} | tojson if x else '{}' }}")
    assert not _delimiters_balance("{{ value_json.state }")
    assert not _delimiters_balance("{{ {'a': 1 }}")
    assert not _delimiters_balance("{{ 'open }}")
    assert not _delimiters_balance("value_json.state }}")


def test_every_template_is_one_balanced_expression() -> None:
    found = [t for config in configs().values() for t in templates(config).values()]
    assert len(found) == 9
    for template in found:
        assert _delimiters_balance(template), template
        assert template.startswith("{{ ") and template.endswith(" }}")


STATUS_IDLE: dict[str, Any] = {
    "state": "idle",
    "current": None,
    "queue_length": 0,
    "voice": "espeak",
    "degraded": False,
    "voice_status": "espeak ready",
    "volume": 0.8,
    "quiet": False,
    "last": None,
    "audio": None,
}
STATUS_SIREN: dict[str, Any] = {
    **STATUS_IDLE,
    "state": "speaking",
    "current": {"id": SIREN_ID, "priority": "critical"},
    "queue_length": 2,
    "voice": "deepgram",
    "voice_status": "deepgram warm (age 3 min)",
    "volume": 1.0,
    "quiet": True,
    "last": {"id": "laundry", "text": "The laundry is done.", "event": "finished", "ts": 1.5},
}


def _render(template: str, status: dict[str, Any]) -> str:
    """Render as Home Assistant does for MQTT: a sandbox, `value` and `value_json`."""
    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    payload = json.dumps(status)
    result = environment.from_string(template).render(value=payload, value_json=status)
    assert isinstance(result, str)
    return result


def test_the_templates_render_the_status_as_home_assistant_expects() -> None:
    found = configs()

    def render(key: tuple[str, str], option: str, status: dict[str, Any]) -> str:
        return _render(found[key][option], status)

    state, queue, voice = ("sensor", "state"), ("sensor", "queue_length"), ("sensor", "voice")
    last, siren = ("sensor", "last_announcement"), ("siren", "siren")
    volume, quiet = ("number", "volume"), ("switch", "quiet")
    assert render(state, "value_template", STATUS_IDLE) == "idle"
    assert render(state, "value_template", STATUS_SIREN) == "speaking"
    assert render(queue, "value_template", STATUS_SIREN) == "2"
    assert render(voice, "value_template", STATUS_SIREN) == "deepgram warm (age 3 min)"
    assert render(volume, "value_template", STATUS_IDLE) == "0.8"
    assert render(quiet, "value_template", STATUS_IDLE) == "OFF"
    assert render(quiet, "value_template", STATUS_SIREN) == "ON"
    assert render(siren, "state_value_template", STATUS_IDLE) == "OFF"
    assert render(siren, "state_value_template", STATUS_SIREN) == "ON"
    other = {**STATUS_SIREN, "current": {"id": "laundry", "priority": "normal"}}
    assert render(siren, "state_value_template", other) == "OFF"
    assert render(last, "value_template", STATUS_IDLE) == ""
    assert render(last, "value_template", STATUS_SIREN) == "The laundry is done."
    assert json.loads(render(last, "json_attributes_template", STATUS_IDLE)) == {}
    attributes = json.loads(render(last, "json_attributes_template", STATUS_SIREN))
    assert attributes == {"id": "laundry", "event": "finished", "ts": 1.5}
    assert found[last]["json_attributes_template"] == LAST_ATTRIBUTES_TEMPLATE
    assert json.loads(render(state, "json_attributes_template", STATUS_IDLE)) == {
        "current": None,
        "audio_problem": None,
    }
    unplugged = {**STATUS_SIREN, "state": "waiting_for_audio", "audio": "no such device"}
    assert render(state, "value_template", unplugged) == "waiting_for_audio"
    assert json.loads(render(state, "json_attributes_template", unplugged)) == {
        "current": SIREN_ID,
        "audio_problem": "no such device",
    }


def test_a_long_last_announcement_is_cut_to_home_assistants_state_limit() -> None:
    long = {**STATUS_SIREN, "last": {**STATUS_SIREN["last"], "text": "Word. " * 100}}
    rendered = _render(configs()["sensor", "last_announcement"]["value_template"], long)
    assert len(rendered) == MAX_STATE_LENGTH == 255
