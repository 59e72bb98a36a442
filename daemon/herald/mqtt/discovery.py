"""Home Assistant MQTT discovery for one Herald speaker: pure data, no I/O.

`discovery_messages(node)` gives one (topic, JSON) config per entity; publish each retained at
QoS 1, on every (re)connection and again whenever Home Assistant's birth message (`online` on
`ha_status_topic(node)`) arrives. `removal_messages(node)` gives the same topics with empty
payloads: published retained, they remove the entities (and the device, once it has none).

What this follows
-----------------
- The MQTT integration page, https://www.home-assistant.io/integrations/mqtt/ : "Discovery
  topic" (`<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`, both ids from
  `[a-zA-Z0-9_-]`), "Single component discovery payload", "Discovery payload" (unknown keys
  are ignored; an empty payload removes), "Supported abbreviations", the `origin` block
  (`name` required, `sw_version`, `support_url`), "Using availability topics", and "Naming of
  MQTT entities" (`default_entity_id`, `has_entity_name`).
- The platform pages notify.mqtt, siren.mqtt, button.mqtt, number.mqtt, switch.mqtt and
  sensor.mqtt (their "Configuration variables"), as published for Home Assistant 2025.10 and
  later: that release added `default_entity_id` and deprecated `object_id` (its repair issue
  says it stops working in 2026.4).
- Home Assistant core, homeassistant/components/mqtt/: `discovery.py` (`TOPIC_MATCHER`),
  `schemas.py` (`MQTT_ENTITY_COMMON_SCHEMA`, the device and origin schemas), `abbreviations.py`,
  and `siren.py`, `notify.py` for what the entities publish (below).

Choices
-------
- Topics are `<prefix>/<component>/herald_<id>/<key>/config`: the documented optional node_id
  level, so one wildcard (`<prefix>/+/herald_<id>/+/config`) finds every config of a speaker,
  and the `herald_` prefix keeps them clear of other software's node ids. `<id>` is `node_id`
  made a slug (lower case, runs of anything but `a-z0-9` become `_`): Herald allows `.` in
  node ids, discovery topics and entity ids do not. The command and state topics keep the
  real node id.
- Full key names, no abbreviations: Home Assistant accepts both ("may be abbreviated to
  conserve memory"); the full names are the documented option names, so a payload can be
  checked against the docs key for key, and a broker log reads without a lookup table.
- No `has_entity_name` key: it is not a configuration variable. Home Assistant sets it on
  every MQTT entity, so the short names below ("Volume") show as "<device name> Volume".
- `default_entity_id` (`<domain>.herald_<id>_<name>`), never `object_id`. Home Assistant
  before 2025.10 ignores the unknown key and derives the same ids from the device and entity
  names (as long as the device keeps its default name).
- `unique_id` is `herald_<id>_<key>`; the device's identifier is `herald_<id>`.

The entities
------------
All share one device block, the origin block and availability on `<base>/<node>/availability`
(`online` / `offline`); commands and state are published at QoS 1.

- notify "Announce" -> `say`. Home Assistant publishes the message text as it is (no
  command template; the title is dropped). Plain text is a `normal` announcement; a message
  that starts with `{` is read as Herald's JSON payload.
- siren "Alert" -> `siren/set`, the contract below; state from `status`.
- button "Stop" -> `stop`, payload `stop`.
- number "Volume" -> `volume/set`, 0-1 in steps of 0.05 (slider), state `status`.volume. Home
  Assistant sends a whole value without a fraction (`0`, `1`), others as they are (`0.35`).
- switch "Quiet mode" -> `quiet/set`, `ON` / `OFF`; state from `status`.quiet.
- sensors from `status`: "State" (enum: idle, speaking, waiting_for_audio; the current
  announcement's id and why the audio device cannot be used as attributes), "Queue length"
  (measurement),
  "Last announcement" (the text, cut to Home Assistant's 255-character state limit; its id,
  event and ts as attributes) and "Voice" (`voice_status`, diagnostic).

The `siren/set` contract
------------------------
The siren config has no `command_template`, so Home Assistant's MQTT siren publishes its
default JSON object (siren.py `_async_publish`; the siren.mqtt page, `command_topic`), not
retained, at QoS 1:

- turn on: `{"state": "ON"}`, plus the turn-on parameters the action was given, each only
  when given: `"tone"`, one of `SIREN_TONES` (Home Assistant refuses others), and
  `"volume_level"`, a float 0.0-1.0. `"duration"` is never sent (`support_duration: false`).
  Example: `{"state": "ON", "tone": "bell", "volume_level": 0.5}`.
- turn off: `{"state": "OFF"}`.

Herald answers ON by queueing its alert text (`home_assistant.siren_text`) with id `SIREN_ID`,
priority critical, chime = `tone` or `alarm`, repeat 3, and volume = `volume_level` when given;
OFF stops the announcement speaking now if its id is `SIREN_ID`. The siren shows ON while the
status's `current.id` is `SIREN_ID` (`state_value_template`), OFF otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from herald.commands import SIREN_TONES
from herald.mqtt.topics import Topics
from herald.status import STATES

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
DISCOVERY_QOS = 1
DISCOVERY_RETAIN = True
ENTITY_QOS = 1

PAYLOAD_ONLINE = "online"
PAYLOAD_OFFLINE = "offline"

MANUFACTURER = "Herald"
MODEL = "Herald speaker"
ORIGIN_NAME = "Herald"

SIREN_ID = "siren"
"""The id of the announcement the siren starts; the siren is ON while it speaks."""

MAX_STATE_LENGTH = 255
"""Home Assistant refuses a state longer than this (homeassistant.const.MAX_LENGTH_STATE_STATE)."""

STATE_TEMPLATE = "{{ value_json.state }}"
STATE_ATTRIBUTES_TEMPLATE = (
    "{{ {'current': value_json.current.id if value_json.current else none,"
    " 'audio_problem': value_json.audio} | tojson }}"
)
QUEUE_LENGTH_TEMPLATE = "{{ value_json.queue_length }}"
VOLUME_TEMPLATE = "{{ value_json.volume }}"
VOICE_TEMPLATE = "{{ value_json.voice_status }}"
QUIET_TEMPLATE = "{{ 'ON' if value_json.quiet else 'OFF' }}"
SIREN_STATE_TEMPLATE = (
    "{{ 'ON' if value_json.current and value_json.current.id == '" + SIREN_ID + "' else 'OFF' }}"
)
LAST_TEXT_TEMPLATE = (
    "{{ (value_json.last.text if value_json.last else '')[:" + str(MAX_STATE_LENGTH) + "] }}"
)
LAST_ATTRIBUTES_TEMPLATE = (
    "{{ {'id': value_json.last.id, 'event': value_json.last.event, 'ts': value_json.last.ts}"
    " | tojson if value_json.last else '{}' }}"
)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str  # e.g. "kitchen"
    base_topic: str  # e.g. "herald"
    name: str  # human name; empty: default_name(node_id)
    sw_version: str
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX


def default_name(node_id: str) -> str:
    """The device name Home Assistant shows when none is configured."""
    return f"Herald {node_id}"


def discovery_slug(node_id: str) -> str:
    """`node_id` as discovery topics and entity ids allow it: `Kitchen.Pi-2` -> `kitchen_pi_2`."""
    slug = re.sub(r"[^a-z0-9]+", "_", node_id.lower()).strip("_")
    if not slug:
        raise ValueError(f"node_id {node_id!r} has no letters or digits to name it by")
    return slug


def device_id(node: NodeInfo) -> str:
    """The device's identifier, the discovery topics' node_id level and the unique_id prefix."""
    return f"herald_{discovery_slug(node.node_id)}"


def herald_topics(node: NodeInfo) -> Topics:
    return Topics(node.base_topic, node.node_id)


def status_topic(node: NodeInfo) -> str:
    """Herald's retained status JSON: every state the entities show comes from here."""
    return herald_topics(node).status


def availability_topic(node: NodeInfo) -> str:
    """Retained `online` / `offline`."""
    return herald_topics(node).availability


def ha_status_topic(node: NodeInfo) -> str:
    """Home Assistant's birth and will (`online` / `offline`): publish discovery again on online."""
    return f"{node.discovery_prefix}/status"


def discovery_topic(node: NodeInfo, component: str, key: str) -> str:
    return f"{node.discovery_prefix}/{component}/{device_id(node)}/{key}/config"


def device_block(node: NodeInfo) -> dict[str, Any]:
    return {
        "identifiers": [device_id(node)],
        "name": node.name or default_name(node.node_id),
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        "sw_version": node.sw_version,
    }


def origin_block(node: NodeInfo) -> dict[str, Any]:
    return {"name": ORIGIN_NAME, "sw_version": node.sw_version}


def availability_block(node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {
            "topic": availability_topic(node),
            "payload_available": PAYLOAD_ONLINE,
            "payload_not_available": PAYLOAD_OFFLINE,
        }
    ]


@dataclass(frozen=True)
class _Entity:
    component: str
    key: str  # unique_id suffix and the topic's object_id
    name: str
    options: dict[str, Any]


def _entities(node: NodeInfo) -> list[_Entity]:
    topics = herald_topics(node)
    status = topics.status
    return [
        _Entity(
            "notify",
            "notify",
            "Announce",
            {"command_topic": topics.say, "qos": ENTITY_QOS, "icon": "mdi:bullhorn"},
        ),
        _Entity(
            "siren",
            "siren",
            "Alert",
            {
                "command_topic": topics.siren_set,
                "payload_on": "ON",
                "payload_off": "OFF",
                "state_topic": status,
                "state_value_template": SIREN_STATE_TEMPLATE,
                "available_tones": list(SIREN_TONES),
                "support_volume_set": True,
                "support_duration": False,
                "qos": ENTITY_QOS,
            },
        ),
        _Entity(
            "button",
            "stop",
            "Stop",
            {
                "command_topic": topics.stop,
                "payload_press": "stop",
                "qos": ENTITY_QOS,
                "icon": "mdi:stop",
            },
        ),
        _Entity(
            "number",
            "volume",
            "Volume",
            {
                "command_topic": topics.volume_set,
                "state_topic": status,
                "value_template": VOLUME_TEMPLATE,
                "min": 0,
                "max": 1,
                "step": 0.05,
                "mode": "slider",
                "qos": ENTITY_QOS,
                "icon": "mdi:volume-high",
            },
        ),
        _Entity(
            "switch",
            "quiet",
            "Quiet mode",
            {
                "command_topic": topics.quiet_set,
                "payload_on": "ON",
                "payload_off": "OFF",
                "state_topic": status,
                "value_template": QUIET_TEMPLATE,
                "state_on": "ON",
                "state_off": "OFF",
                "qos": ENTITY_QOS,
                "icon": "mdi:bell-sleep",
            },
        ),
        _Entity(
            "sensor",
            "state",
            "State",
            {
                "state_topic": status,
                "value_template": STATE_TEMPLATE,
                "json_attributes_topic": status,
                "json_attributes_template": STATE_ATTRIBUTES_TEMPLATE,
                "device_class": "enum",
                "options": list(STATES),
                "qos": ENTITY_QOS,
                "icon": "mdi:account-voice",
            },
        ),
        _Entity(
            "sensor",
            "queue_length",
            "Queue length",
            {
                "state_topic": status,
                "value_template": QUEUE_LENGTH_TEMPLATE,
                "state_class": "measurement",
                "qos": ENTITY_QOS,
                "icon": "mdi:playlist-play",
            },
        ),
        _Entity(
            "sensor",
            "last_announcement",
            "Last announcement",
            {
                "state_topic": status,
                "value_template": LAST_TEXT_TEMPLATE,
                "json_attributes_topic": status,
                "json_attributes_template": LAST_ATTRIBUTES_TEMPLATE,
                "qos": ENTITY_QOS,
                "icon": "mdi:message-text-clock",
            },
        ),
        _Entity(
            "sensor",
            "voice",
            "Voice",
            {
                "state_topic": status,
                "value_template": VOICE_TEMPLATE,
                "entity_category": "diagnostic",
                "qos": ENTITY_QOS,
                "icon": "mdi:waveform",
            },
        ),
    ]


def _entity_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _config(node: NodeInfo, entity: _Entity) -> dict[str, Any]:
    prefix = device_id(node)
    return {
        "name": entity.name,
        "unique_id": f"{prefix}_{entity.key}",
        "default_entity_id": f"{entity.component}.{prefix}_{_entity_slug(entity.name)}",
        **entity.options,
        "availability": availability_block(node),
        "device": device_block(node),
        "origin": origin_block(node),
    }


def discovery_messages(node: NodeInfo) -> list[tuple[str, str]]:
    """(topic, JSON payload) for every entity; publish retained, QoS 1."""
    return [
        (
            discovery_topic(node, entity.component, entity.key),
            json.dumps(_config(node, entity), ensure_ascii=False, separators=(",", ":")),
        )
        for entity in _entities(node)
    ]


def removal_messages(node: NodeInfo) -> list[tuple[str, str]]:
    """(topic, "") for the same topics: empty retained payloads remove the entities."""
    return [(discovery_topic(node, entity.component, entity.key), "") for entity in _entities(node)]
