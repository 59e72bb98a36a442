"""Herald's settings: one frozen pydantic model loaded from TOML, plus secret lookup.

Secrets never come from argv or from the TOML file itself: a `*_file` key names a file that
holds the secret, else an environment variable, else a systemd credential
(`$CREDENTIALS_DIRECTORY/<name>`).
"""

from __future__ import annotations

import os
import re
import socket
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from herald.announcement import parse_priority
from herald.chime_names import validate_chime_spec

DEFAULT_CONFIG_PATH = Path("/etc/herald/herald.toml")
CONFIG_ENV = "HERALD_CONFIG"

_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(Exception):
    """A configuration problem; `lines` are ready to print, one per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _default_node_id() -> str:
    """The hostname, reduced to what is safe in an MQTT topic level."""
    name = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-")
    return cleaned or "herald"


def _check_topic_level(value: str) -> str:
    if not _TOPIC_LEVEL.match(value):
        raise ValueError("use letters, digits, '_', '-' or '.' only (no '/', '+', '#' or spaces)")
    return value


class MqttConfig(_Frozen):
    host: str = Field("localhost", min_length=1, description="MQTT broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker TCP port")
    base_topic: str = Field(
        "herald",
        description="first level of every Herald topic: letters, digits, `_`, `-`, `.`",
    )
    username: str | None = Field(
        None,
        description="broker login, if the broker wants one; for its password see `password_file`",
    )
    password_file: Path | None = Field(
        None,
        description="file holding the broker password; else `$HERALD_MQTT_PASSWORD`, "
        "else the systemd credential `mqtt_password`",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval in seconds")
    reconnect_max_s: int = Field(
        60,
        ge=1,
        le=3600,
        description="longest wait between reconnect attempts: the wait starts at 1 s and "
        "doubles up to this",
    )
    max_payload_bytes: int = Field(
        16384, ge=256, le=1_048_576, description="larger announce payloads are rejected"
    )
    session_expiry_s: int = Field(
        3600,
        ge=0,
        le=7 * 24 * 3600,
        description="the broker keeps Herald's subscriptions and QoS 1 messages this long "
        "while Herald is away (a restart, a network blip)",
    )
    tls: bool = Field(False, description="connect with TLS (usually with `port = 8883`)")
    ca_file: Path | None = Field(
        None,
        description="the CA certificate(s) that signed the broker's, for a private CA (needs "
        "`tls`); else the system's CAs",
    )
    cert_file: Path | None = Field(
        None, description="a client certificate, for mutual TLS (needs `tls` and `key_file`)"
    )
    key_file: Path | None = Field(
        None, description="the client certificate's private key (goes with `cert_file`)"
    )
    tls_insecure: bool = Field(
        False,
        description="accept a broker certificate whose host name does not match (needs "
        "`tls`): for tests only",
    )
    groups: list[str] = Field(
        default_factory=list,
        description="also speak what is sent to `<base_topic>/group/<name>/say`, for each name",
    )
    rate_per_minute: int = Field(
        30,
        ge=1,
        le=100_000,
        description="announcements a minute from one topic, more are rejected (a flooding "
        "publisher cannot starve the others); critical ones are never limited",
    )
    rate_burst: int = Field(
        10, ge=1, le=100_000, description="how many of `rate_per_minute` may come at once"
    )

    @field_validator("base_topic")
    @classmethod
    def _base_topic_is_one_level(cls, value: str) -> str:
        return _check_topic_level(value)

    @field_validator("groups")
    @classmethod
    def _groups_are_topic_levels(cls, value: list[str]) -> list[str]:
        for group in value:
            _check_topic_level(group)
        return value

    @model_validator(mode="after")
    def _tls_files_need_tls(self) -> MqttConfig:
        if not self.tls and (self.ca_file or self.cert_file or self.tls_insecure):
            raise ValueError("ca_file, cert_file and tls_insecure need tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class HomeAssistantConfig(_Frozen):
    discovery: bool = Field(
        True,
        description="announce Herald to Home Assistant as a device with its entities (MQTT "
        "discovery: no YAML)",
    )
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")
    name: str | None = Field(
        None, description="the device's name in Home Assistant; none: `Herald <node_id>`"
    )
    siren_text: str = Field(
        "Attention! Alert from Home Assistant.",
        min_length=1,
        description="what the siren entity says when turned on",
    )

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix_is_one_level(cls, value: str) -> str:
        return _check_topic_level(value)


class HermesConfig(_Frozen):
    enabled: bool = Field(
        False,
        description="speak what Rhasspy sends to `hermes/tts/say`, and answer with "
        "`hermes/tts/sayFinished`",
    )
    site_id: str | None = Field(None, description="the Hermes `siteId` to answer; none: `node_id`")


class EspeakConfig(_Frozen):
    voice: str = Field(
        "en-us", min_length=1, description="espeak-ng voice (`espeak-ng --voices` lists them)"
    )
    speed_wpm: int = Field(165, ge=80, le=450, description="words per minute, 80-450")
    pitch: int = Field(50, ge=0, le=99, description="base pitch, 0-99")


class DeepgramConfig(_Frozen):
    url: str = Field(
        "wss://api.deepgram.com/v1/speak",
        description="streaming TTS endpoint; `wss://api.eu.deepgram.com/v1/speak` for the EU",
    )
    model: str = Field(
        "aura-2-thalia-en", min_length=1, description="any Aura voice, e.g. `aura-2-andromeda-en`"
    )
    api_key_file: Path | None = Field(
        None,
        description="file holding the API key; else `$DEEPGRAM_API_KEY`, "
        "else the systemd credential `deepgram_api_key`",
    )
    max_age_s: float = Field(
        3300,
        ge=2,
        le=3540,
        description="replace the socket at this age, 2-3540 (the server closes it at 3600)",
    )
    clear_message: Literal["Clear", "Reset"] = Field(
        "Clear", description="`Reset` only for servers that follow the older spec"
    )
    chars_per_minute: int = Field(
        2400,
        ge=100,
        le=1_000_000,
        description="text budget per socket: Herald waits rather than exceed it",
    )
    flushes_per_minute: int = Field(
        20,
        ge=1,
        le=1000,
        description="the server's `Flush` limit (one `Flush` per announcement)",
    )
    connect_wait_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="an announcement waits this long for a socket, then the next voice in "
        "`voice.engines` speaks it",
    )
    first_audio_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="no audio this long after the text (its `Flush`): the socket is replaced",
    )
    clear_timeout_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="no `Cleared` this long after `Clear`: the socket is replaced",
    )

    @field_validator("url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        if not value.startswith(("wss://", "ws://")):
            raise ValueError("must start with wss:// (or ws:// for a local server)")
        return value

    @field_validator("api_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def _websocket_url(value: str) -> str:
    if not value.startswith(("wss://", "ws://")):
        raise ValueError("must start with wss:// (or ws:// for a local server)")
    return value


_SLNG_FIELDS = {"host", "provider", "model", "variant"}


class SlngConfig(_Frozen):
    host: str = Field(
        "api.slng.ai",
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$",
        description="SLNG's host; a regional gateway is `<region>.api.slng.ai`, e.g. "
        "`eu-west.api.slng.ai`",
    )
    route: Literal["bridge", "per-model"] = Field(
        "bridge",
        description="`bridge`: `wss://{host}/v1/bridges/unmute/tts/{provider}/{model}:{variant}` "
        "(SLNG's own protocol, what its client plugins use); `per-model`: "
        "`wss://{host}/v1/tts/{provider}/{model}:{variant}`",
    )
    url: str | None = Field(
        None,
        description="the whole endpoint instead of `host` and `route`; `{host}`, `{provider}`, "
        "`{model}` and `{variant}` are filled in",
    )
    provider: str = Field(
        "deepgram",
        min_length=1,
        description="a proxied provider (`deepgram`, `elevenlabs`), or `slng/...` for a model "
        "SLNG hosts, e.g. `slng/rime`",
    )
    model: str = Field(
        "aura",
        min_length=1,
        description="the model, e.g. `aura`, or `arcana` with provider `slng/rime`",
    )
    variant: str = Field(
        "2",
        description="the model's variant, e.g. `2`, `2-en`, `3-en`; `init` names the model "
        "`model:variant`",
    )
    voice: str = Field("aura-2-thalia-en", min_length=1, description="the model's voice")
    language: str | None = Field(
        None,
        description="language code, e.g. `en`, where the model has one; none: the model's own",
    )
    speed: float | None = Field(
        None,
        gt=0.25,
        le=4.0,
        description="speech speed multiplier, where the model has one; none: the model's own",
    )
    sample_rate: int = Field(
        24000,
        ge=8000,
        le=48000,
        description="the rate asked for; resampled to `audio.sample_rate`",
    )
    api_key_file: Path | None = Field(
        None,
        description="file holding the API key; else `$SLNG_API_KEY`, "
        "else the systemd credential `slng_api_key`",
    )
    region: str | None = Field(
        None,
        description="sent as `X-Region-Override`, e.g. `eu-north-1`; none: SLNG chooses",
    )
    max_age_s: float = Field(
        1200,
        ge=2,
        le=86400,
        description="replace the socket at this age, a new one first (SLNG ends a session at "
        "30 minutes on some plans)",
    )
    keepalive_s: float = Field(
        20.0,
        ge=0,
        le=600,
        description="send `keepalive` after this long idle (never again once the server says "
        "it does not know it); 0: WebSocket pings alone",
    )
    connect_wait_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="an announcement waits this long for a socket, then the next voice in "
        "`voice.engines` speaks it",
    )
    ready_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="no greeting (`ready` or `Metadata`) this long after `init`: a fresh socket",
    )
    first_audio_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="no audio this long after the text: the socket is replaced",
    )
    clear_timeout_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="no `cleared` this long after `clear`: the socket is replaced",
    )

    @field_validator("url")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        if unknown := names - _SLNG_FIELDS:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}}: use {{host}}, {{provider}}, "
                "{model}, {variant}"
            )
        return _websocket_url(value)

    @field_validator("api_key_file", "url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def model_id(self) -> str:
        """The model as `init` names it: model:variant."""
        return f"{self.model}:{self.variant}" if self.variant else self.model

    @property
    def url_template(self) -> str:
        """`url`, else the route's: SLNG's two route families (docs/protocols.md, "SLNG"), its
        native bridge (what SLNG's own client plugins use) and the per-model routes."""
        if self.url:
            return self.url
        if self.route == "per-model":
            return "wss://{host}/v1/tts/{provider}/{model}:{variant}"
        return "wss://{host}/v1/bridges/unmute/tts/{provider}/{model}:{variant}"

    @property
    def socket_url(self) -> str:
        template = self.url_template
        return template.format(
            host=self.host, provider=self.provider, model=self.model, variant=self.variant
        )


class GatewayConfig(_Frozen):
    url: str = Field(
        "ws://localhost:8002/api/v1/ws",
        description="the self-hosted TTS gateway's WebSocket (no key, no auth)",
    )
    sample_rate: int = Field(
        24000,
        ge=8000,
        le=48000,
        description="the rate the gateway really sends (it cannot be asked): its "
        "`TTS_SAMPLE_RATE`, but 16000 whenever its provider is OpenAI. `herald check` says "
        "when the audio's length suggests another rate",
    )
    max_age_s: float = Field(
        0,
        ge=0,
        le=86400,
        description="replace the socket at this age; 0: never (the gateway has no age limit, "
        "and each reconnect calls its shared provider's `close()`)",
    )
    connect_wait_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="an announcement waits this long for a socket, then the next voice in "
        "`voice.engines` speaks it",
    )
    first_audio_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="no audio and no `done` this long after the text: the synthesis died and "
        "the next voice speaks it. Raise it for long texts with OpenAI, whose first audio comes "
        "only once the whole text is done",
    )
    stall_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="no audio and no `done` this long after some audio: the synthesis died",
    )
    cancel_wait_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="after a stop (`cancel`), discard audio until `done`, or until none came "
        "this long",
    )

    @field_validator("url")
    @classmethod
    def _websocket(cls, value: str) -> str:
        return _websocket_url(value)


class CacheConfig(_Frozen):
    enabled: bool = Field(
        True,
        description="keep what the cloud voices said in `<state_dir>/cache` and play it again, "
        'with no network; a payload\'s `"cache": false` skips it',
    )
    max_mb: float = Field(
        50,
        gt=0,
        le=100_000,
        description="`<state_dir>/cache` holds at most this many MB; the least recently used "
        "phrases go first",
    )


EngineName = Literal["deepgram", "slng", "gateway", "espeak"]


class VoiceConfig(_Frozen):
    engines: Annotated[list[EngineName], Field(min_length=1)] = Field(
        default=["espeak"],
        description="the voices to try, in order: `deepgram`, `slng`, `gateway`, `espeak`; the "
        "first that speaks the text to the end is heard",
    )
    espeak: EspeakConfig = EspeakConfig()
    deepgram: DeepgramConfig = DeepgramConfig()
    slng: SlngConfig = SlngConfig()
    gateway: GatewayConfig = GatewayConfig()
    cache: CacheConfig = CacheConfig()

    @field_validator("engines")
    @classmethod
    def _engines_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("an engine is listed twice")
        return value


class LevelConfig(_Frozen):
    ttl_s: float = Field(
        gt=0,
        le=7 * 24 * 3600,
        description="an announcement not spoken this long expires instead (a payload's `ttl` wins)",
    )
    chime: str | Literal[False] = Field(
        description="the chime before an announcement (a payload's `chime` wins): `soft`, "
        "`bell`, `alert`, `alarm`, the absolute path of any WAV file (not only in "
        "`audio.chimes_dir`), or `false`",
    )

    @field_validator("chime")
    @classmethod
    def _chime_known(cls, value: str | bool) -> str | bool:
        return value if value is False else validate_chime_spec(str(value))


class PrioritiesConfig(_Frozen):
    low: LevelConfig = LevelConfig(ttl_s=3600, chime=False)
    normal: LevelConfig = LevelConfig(ttl_s=900, chime="soft")
    high: LevelConfig = LevelConfig(ttl_s=300, chime="bell")
    critical: LevelConfig = LevelConfig(ttl_s=300, chime="alarm")

    def for_level(self, level: str) -> LevelConfig:
        level_config: LevelConfig = getattr(self, level)
        return level_config


_CLOCK_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class QuietHoursConfig(_Frozen):
    enabled: bool = Field(False, description="hold back less urgent announcements at night")
    start: str = Field("22:00", description="local time, HH:MM")
    end: str = Field(
        "07:00",
        description="local time, HH:MM; may be earlier than `start` (the window spans midnight)",
    )
    min_priority: str | int = Field(
        "high",
        description="at or above this priority announcements still speak; the rest wait for "
        "the end of quiet hours, or expire",
    )

    @field_validator("start", "end")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        if not _CLOCK_TIME.match(value):
            raise ValueError("must be a 24-hour time HH:MM, e.g. 22:30")
        return value

    @field_validator("min_priority")
    @classmethod
    def _known_priority(cls, value: str | int) -> str | int:
        parse_priority(value)
        return value


class QueueConfig(_Frozen):
    max_length: int = Field(
        100,
        ge=1,
        le=10_000,
        description="announcements waiting at most; when full, the least urgent oldest one is "
        "dropped",
    )


class AudioConfig(_Frozen):
    device: str = Field(
        "default",
        min_length=1,
        description="the ALSA PCM to play on (`herald devices` lists them)",
    )
    sample_rate: int = Field(
        48000,
        ge=8000,
        le=192000,
        description="the device's rate in Hz; voices are resampled to it",
    )
    channels: int = Field(
        1, ge=1, le=8, description="device channels; mono speech is copied to each"
    )
    period_ms: int = Field(20, ge=5, le=200, description="ALSA period: the unit of every write")
    periods: int = Field(
        4,
        ge=2,
        le=32,
        description="ALSA buffer length in periods; a preemption silences the old voice within "
        "about one period",
    )
    volume: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="default software volume, 0.0-1.0 (a payload's `volume` wins)",
    )
    critical_min_volume: float = Field(
        0.7, ge=0.0, le=1.0, description="critical announcements are never quieter than this"
    )
    wake_preroll_ms: int = Field(
        0,
        ge=0,
        le=2000,
        description="silence before the first sound after the output was idle: 200-500 for "
        "USB/HDMI amplifiers that clip the first word",
    )
    idle_after_s: float = Field(
        5.0, ge=0, le=3600, description="the output counts as idle after this long without sound"
    )
    chimes_dir: Path = Field(
        Path("/etc/herald/chimes"),
        description="the only WAV files a payload may name as its `chime`, by file name "
        "(`doorbell.wav`) or absolute path: directly in this absolute directory, with no "
        "symbolic link or `..` leading out of it. `priorities.<level>.chime` may be any WAV file",
    )

    loudness_lufs: float = Field(
        -18.0,
        ge=-40.0,
        le=0.0,
        description="the integrated loudness (ITU-R BS.1770, LUFS) every voice and chime is "
        "brought to before the volume applies; 0 plays each at its own level",
    )
    true_peak_dbtp: float = Field(
        -1.0,
        ge=-20.0,
        le=0.0,
        description="a limiter keeps every sound's true peak at or below this (dBTP), so a "
        "raised voice never clips",
    )
    tail_ms: int = Field(
        150,
        ge=0,
        le=5000,
        description="silence after an announcement's last sound, played out before the output "
        "is stopped: for amplifiers that fade out or cut the last word",
    )
    keep_awake: bool = Field(
        False,
        description="while idle, play an inaudible 15 Hz tone so a Bluetooth speaker or an "
        "amplifier that sleeps on digital silence stays awake; keeps the device open",
    )
    keep_awake_dbfs: float = Field(
        -50.0, ge=-80.0, le=-30.0, description="the level of the keep-awake tone, in dBFS"
    )
    latency_offset_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="how long the hardware takes after ALSA to make a sample heard (USB, HDMI "
        "and Bluetooth add their own): rooms in sync hand their sound to ALSA this much "
        "earlier (`docs/rooms.md` says how to measure it)",
    )

    @field_validator("chimes_dir")
    @classmethod
    def _chimes_dir_absolute(cls, value: Path) -> Path:
        if not value.is_absolute() or ".." in value.parts:
            raise ValueError("give an absolute path without '..'")
        return value

    @property
    def period_frames(self) -> int:
        return self.sample_rate * self.period_ms // 1000


class AmpConfig(_Frozen):
    on_command: list[str] = Field(
        default_factory=list,
        description="a program and its arguments that switch the amplifier on, run before the "
        'first sound after it was off (e.g. `["pinctrl", "set", "17", "op", '
        '"dh"]`); empty: no amplifier to switch',
    )
    off_command: list[str] = Field(
        default_factory=list,
        description="a program and its arguments that switch it off again, after `hold_s` of "
        "silence",
    )
    warmup_ms: int = Field(
        300,
        ge=0,
        le=10_000,
        description="how long the amplifier needs after `on_command` before the chime and "
        "the voice start (a relay: about 100)",
    )
    hold_s: float = Field(
        60.0,
        ge=1.0,
        le=86_400,
        description="how long the amplifier stays on after the last sound (a preemption or "
        "the next announcement in the queue never switches it off)",
    )
    command_timeout_s: float = Field(
        5.0, gt=0, le=60, description="a switch command that takes longer is stopped and logged"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.on_command)


def host_and_port(value: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6 address]` or `[v6 address]:port`. Raises ValueError."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("write an IPv6 address as [address] or [address]:port")
        port = rest[1:] if rest else ""
    elif value.count(":") > 1:
        raise ValueError("write an IPv6 address as [address] or [address]:port")
    else:
        host, colon, port = value.partition(":")
        if colon and not port:
            raise ValueError("give the port after the ':', or leave both out")
    if not host:
        raise ValueError("give a host name or address")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port must be a number from 1 to 65535, not '{port[:20]}'")
    return host, int(port)


class DuckingConfig(_Frozen):
    enabled: bool = Field(
        False, description="lower the other audio on this speaker while Herald speaks"
    )
    level_db: float = Field(
        -20.0, ge=-60.0, le=0.0, description="how far the other audio is lowered, in dB"
    )
    ramp_ms: int = Field(
        200, ge=0, le=5000, description="each way, the volume moves over this long"
    )
    pulse: bool = Field(
        False,
        description="lower the other streams of the PulseAudio or PipeWire server Herald "
        "plays to, each on its own volume (needs `pactl`)",
    )
    pulse_server: str = Field(
        "",
        description="that server, as `pactl --server` takes it (e.g. `unix:/run/user/1000/"
        "pulse/native`); empty: pactl's default",
    )
    mpd: str = Field(
        "", description="an MPD to lower, as `host:port` (port 6600 if left out); empty: none"
    )
    pause_from: Literal["", "low", "normal", "high", "critical"] = Field(
        "",
        description="announcements of this priority or above pause the players instead "
        "(MPD pauses; Snapcast and PulseAudio streams are muted); empty: always lower",
    )
    snapcast: str = Field(
        "",
        description="a snapserver's control, as `host:port` (port 1705 if left out), whose "
        "client in this room is lowered; empty: none",
    )
    snapcast_client: str = Field(
        "",
        description="that client's id (`snapclient --hostID`) or host name; empty: this "
        "machine's host name",
    )

    @field_validator("mpd", "snapcast")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            host_and_port(value, 1)
        return value

    mpd_password_file: Path | None = Field(
        None,
        description="a file holding the MPD password, if it has one (or the MPD_PASSWORD "
        "environment variable, or the systemd credential `mpd_password`)",
    )


class EsphomeConfig(_Frozen):
    enabled: bool = Field(
        False,
        description="serve ESPHome's native API: Home Assistant adds Herald as an ESPHome "
        "device with a media player that takes announcements (`docs/esphome.md`)",
    )
    port: int = Field(6053, ge=1, le=65535, description="the API's TCP port (ESPHome's is 6053)")
    encryption_key_file: Path | None = Field(
        None,
        description="file holding the encryption key (base64 of 32 bytes, ESPHome's "
        "`api: encryption: key`); else `$HERALD_ESPHOME_KEY`, else the systemd credential "
        "`esphome_key` (`install.sh --esphome-key` makes one); none anywhere: plaintext",
    )
    name: str = Field(
        "",
        pattern=r"^([a-z0-9][a-z0-9-]{0,30})?$",
        description="the device's ESPHome name (lower case, digits, `-`); empty: `herald-` and "
        "the node_id",
    )
    announce_priority: Literal["low", "normal", "high", "critical"] = Field(
        "high", description="the priority of media Home Assistant sends as an announcement"
    )
    media_priority: Literal["low", "normal", "high", "critical"] = Field(
        "normal", description="the priority of media sent without the announce flag"
    )
    max_media_mb: float = Field(
        50.0, gt=0, le=1000, description="a download larger than this fails the announcement"
    )
    max_media_s: float = Field(
        900.0,
        gt=0,
        le=24 * 3600,
        description="a download that waits on the server longer than this in all fails the "
        "announcement (the time the audio takes to play does not count)",
    )
    mdns: bool = Field(
        True,
        description="announce the device over mDNS (`_esphomelib._tcp`) so Home Assistant "
        "discovers it",
    )

    @field_validator("encryption_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class SyncConfig(_Frozen):
    enabled: bool = Field(
        True,
        description="an announcement sent to several speakers (`all`, a group, a room list) "
        "starts at one agreed instant in every room, chime included, and stays in step",
    )
    lead_ms: int = Field(
        500,
        ge=150,
        le=5000,
        description="how far after its arrival the instant is proposed: long enough for a warm "
        "voice, the amplifier's warm-up and the ducking; a room whose sound is late joins "
        "in step, a little way into it",
    )
    max_clock_error_ms: float = Field(
        10.0,
        gt=0.0,
        le=1000.0,
        description="a node whose clock is not synchronized, or whose estimated error (from "
        "chrony or ntpd) is larger, starts as soon as it is ready instead (the event says so)",
    )
    trust_clock: bool = Field(
        False,
        description="skip the clock check: only for nodes that share one clock (several "
        "Herald instances on one machine)",
    )


class Config(_Frozen):
    node_id: str = Field(
        default_factory=_default_node_id,
        description="this speaker's name in MQTT topics (`herald/<node_id>/say`): letters, "
        "digits, `_`, `-`, `.`; not `all`, `group` or `rooms`",
    )
    mqtt: MqttConfig = MqttConfig()
    voice: VoiceConfig = VoiceConfig()
    audio: AudioConfig = AudioConfig()
    amp: AmpConfig = AmpConfig()
    ducking: DuckingConfig = DuckingConfig()
    sync: SyncConfig = SyncConfig()
    esphome: EsphomeConfig = EsphomeConfig()
    queue: QueueConfig = QueueConfig()
    priorities: PrioritiesConfig = PrioritiesConfig()
    quiet_hours: QuietHoursConfig = QuietHoursConfig()
    home_assistant: HomeAssistantConfig = HomeAssistantConfig()
    hermes: HermesConfig = HermesConfig()
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY", "/var/lib/herald")),
        description="where the queue journal, the phrase cache and the volume and quiet mode "
        "set at run time are kept",
    )

    @field_validator("node_id")
    @classmethod
    def _node_id_is_one_level(cls, value: str) -> str:
        if value in ("all", "group", "rooms"):
            raise ValueError(f"'{value}' is reserved for topics that address several speakers")
        return _check_topic_level(value)


def config_path(explicit: str | None) -> tuple[Path, bool]:
    """The file to load and whether it must exist (it must when somebody named it)."""
    if explicit:
        return Path(explicit), True
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env), True
    return DEFAULT_CONFIG_PATH, False


def load_config(explicit: str | None = None) -> tuple[Config, Path | None]:
    """Load the config file (or built-in defaults when the default file is absent).

    Returns the config and the file it came from, None for defaults.
    Raises ConfigError with one printable line per problem.
    """
    path, required = config_path(explicit)
    if not path.exists() and not required:
        return Config(), None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"config error: {path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config error: {path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config error: {path}: TOML syntax: {exc}"]) from None
    return parse_config(data, source=str(path)), path


def parse_config(data: dict[str, object], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [f"config error: {source}: {_key(err['loc'])}: {_reason(err)}" for err in exc.errors()]
        ) from None


def _key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
        else:
            parts.append(part)
    return ".".join(parts) or "(top level)"


def _reason(err: object) -> str:
    assert isinstance(err, dict)
    kind, msg = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        return f"{msg} (got {err['input']!r})"
    return msg.removeprefix("Value error, ")


def installed_credentials() -> Path:
    """Where install.sh keeps secrets ($HERALD_CREDENTIALS_DIR moves it, for tests)."""
    return Path(os.environ.get("HERALD_CREDENTIALS_DIR", "/etc/herald/credentials"))


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from, for a person (never the secret itself)."""

    where: str
    value: str | None


def find_secret(file: Path | None, env: str, credential: str) -> SecretSource:
    """A secret from `file`, else `$env`, else the systemd credential, else install.sh's copy.

    The last one is readable by root only: it lets `sudo herald check` test the installed key.
    Raises ConfigError naming the file (never the secret) when a named file cannot be read.
    """
    if file is not None:
        try:
            return SecretSource(f"file {file}", file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError([f"config error: secret file {file}: {exc.strerror}"]) from None
    if value := os.environ.get(env):
        return SecretSource(f"${env}", value.strip())
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (path := Path(cred_dir) / credential).is_file():
        return SecretSource(f"systemd credential {credential}", _read(path))
    installed = installed_credentials() / credential
    if os.access(installed, os.R_OK):
        return SecretSource(f"{installed}", _read(installed))
    try:
        installed.stat()  # the directory is root's: a PermissionError still says it is there
    except PermissionError:
        return SecretSource(f"{installed} (readable by root and the service only)", None)
    except OSError:
        return SecretSource("nowhere", None)
    return SecretSource(f"{installed} (readable by root and the service only)", None)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def read_secret(file: Path | None, env: str, credential: str) -> str | None:
    """The secret's value (see find_secret), or None when none is set."""
    return find_secret(file, env, credential).value
