"""`herald check`: prove each part works on this machine, one line and one fix per part."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from herald.audio import AudioError
from herald.audio.alsa import AlsaOutput
from herald.audio.loudness import VoiceLevels, voice_key
from herald.audio.meter import MeterUnavailable, check_meter
from herald.clock import describe, read_clock
from herald.config import Config, ConfigError, find_secret
from herald.mqtt.client import MqttBridge
from herald.sync import ClockState, clock_problem
from herald.voice import VoiceError, build_voices, voice_identities

BROKER_TIMEOUT_S = 5.0
KEPT_MESSAGE_WAIT_S = 3.0  # how long a message kept for an absent session may take to arrive


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # works, but not as well as it could: `!`, with the fix; exit 0

    def line(self) -> str:
        mark = "✘" if not self.ok else "!" if self.warning else "✔"
        text = f"{mark} {self.name}: {self.detail}"
        shown = self.fix and (not self.ok or self.warning)
        return f"{text}\n    fix: {self.fix}" if shown else text


async def run_checks(config: Config, source: Path | None) -> list[CheckResult]:
    where = str(source) if source else "built-in defaults (no config file)"
    results = [CheckResult("config", True, where)]
    results.extend(check_secrets(config))
    broker = await check_broker(config)
    results.append(broker)
    if broker.ok:
        results.append(await check_broker_keeps_messages(config))
    results.append(await check_audio(config))
    results.append(check_loudness(config))
    results.append(check_clock(config, read_clock()))
    if config.esphome.enabled:
        results.append(check_esphome(config))
    results.extend(await check_voices(config))
    return results


def check_esphome(config: Config) -> CheckResult:
    """The ESPHome API's encryption: a key that decodes, or a warning that there is none."""
    from herald.esphome.service import device_name, encryption_key

    name = f"esphome {device_name(config)} on port {config.esphome.port}"
    try:
        source = find_secret(
            config.esphome.encryption_key_file, "HERALD_ESPHOME_KEY", "esphome_key"
        )
        key = encryption_key(config)
    except ConfigError as exc:
        return CheckResult(name, False, exc.lines[0], "sudo ./install.sh --esphome-key")
    if key is None:
        return CheckResult(
            name,
            True,
            "plaintext: anyone on your network can play sound on this speaker",
            "sudo ./install.sh --esphome-key (Home Assistant asks for the key once)",
            warning=True,
        )
    return CheckResult(name, True, f"encrypted (key from {source.where})")


def check_clock(config: Config, state: ClockState | None) -> CheckResult:
    """Whether this node's clock is good enough for rooms in sync (a warning, not a failure:
    a node on its own needs no synchronized clock)."""
    sync = config.sync
    if not sync.enabled:
        return CheckResult("clock", True, f"{describe(state)}; rooms in sync off (sync.enabled)")
    if sync.trust_clock:
        return CheckResult("clock", True, f"{describe(state)}; trusted (sync.trust_clock)")
    problem = clock_problem(state, sync.max_clock_error_ms / 1000)
    if problem is None:
        return CheckResult("clock", True, f"{describe(state)}; rooms in sync can take part")
    return CheckResult(
        "clock",
        True,
        f"{problem}: announcements to several rooms start here when ready, not in step",
        "sudo apt install systemd-timesyncd (or chrony), then check `timedatectl`",
        warning=True,
    )


def check_loudness(config: Config) -> CheckResult:
    """The meter loads, and what each configured voice is taken to measure."""
    target = config.audio.loudness_lufs
    if target == 0:
        return CheckResult("loudness", True, "off (audio.loudness_lufs = 0): each sound as made")
    try:
        check_meter()
    except MeterUnavailable as exc:
        return CheckResult(
            "loudness", False, str(exc), "sudo apt install libebur128-1 (install.sh does)"
        )
    levels = VoiceLevels(config.state_dir / "loudness.json", save=False)
    identities = voice_identities(config)
    known = []
    for engine in config.voice.engines:
        identity = voice_key(engine, identities)
        heard = levels.heard(identity)
        taken = levels.lufs(identity, engine)
        known.append(
            f"{engine} {taken:.1f} LUFS ({heard} heard)" if heard else f"{engine} not heard yet"
        )
    return CheckResult(
        "loudness",
        True,
        f"target {target:g} LUFS, peaks <= {config.audio.true_peak_dbtp:g} dBTP; "
        + ", ".join(known),
    )


def check_secrets(config: Config) -> list[CheckResult]:
    """Where each secret the config needs comes from (never what it is)."""
    needed = []
    if "deepgram" in config.voice.engines:
        file = config.voice.deepgram.api_key_file
        needed.append(("Deepgram key", file, "DEEPGRAM_API_KEY", "deepgram_api_key"))
    if "slng" in config.voice.engines:
        file = config.voice.slng.api_key_file
        needed.append(("SLNG key", file, "SLNG_API_KEY", "slng_api_key"))
    if config.mqtt.username:
        needed.append(
            ("MQTT password", config.mqtt.password_file, "HERALD_MQTT_PASSWORD", "mqtt_password")
        )
    results = []
    for label, file, env, credential in needed:
        try:
            source = find_secret(file, env, credential)
        except ConfigError as exc:
            results.append(CheckResult(label, False, exc.lines[0], "make the file readable"))
            continue
        if source.value:
            results.append(CheckResult(label, True, f"from {source.where}"))
        elif source.where != "nowhere":
            fix = "run `sudo herald check` to test it as the service will"
            results.append(CheckResult(label, False, f"in {source.where}", fix))
        else:
            fix = (
                f"install.sh --{credential.replace('_', '-').replace('api-key', 'key')}-file FILE, "
                f"or ${env}"
            )
            results.append(CheckResult(label, False, "not set", fix))
    return results


async def check_broker(config: Config) -> CheckResult:
    name = f"broker {config.mqtt.host}:{config.mqtt.port}"
    try:
        bridge = MqttBridge(config.mqtt, f"herald-check-{config.node_id}", [])
    except ConfigError as exc:
        return CheckResult(name, False, exc.lines[0], "check the password file and TLS files")
    async with bridge:
        if await bridge.wait_connected(BROKER_TIMEOUT_S):
            return CheckResult(name, True, "connected")
    return CheckResult(
        name,
        False,
        bridge.last_error or f"no connection within {BROKER_TIMEOUT_S:.0f} s",
        "is the broker running? (install.sh --with-broker installs one); check mqtt.host, "
        "mqtt.port, mqtt.username and the password",
    )


async def check_broker_keeps_messages(config: Config) -> CheckResult:
    """What is sent to Herald while it is away (a restart, an update) waits for it at the broker.

    Herald's session is persistent, so the broker should keep its QoS 1 messages while it is
    disconnected. Not every broker does: mosquitto 2.0.12 and later with `per_listener_settings
    true` drop them (eclipse/mosquitto issue 2618). Tried for real: a session of its own
    subscribes, goes away, a message is sent to it, and it comes back to look for the message.
    """
    name = "broker keeps messages for Herald while it is away"
    session = f"herald-check-session-{uuid.uuid4().hex[:12]}"
    topic = f"{config.mqtt.base_topic}/{config.node_id}/check/{uuid.uuid4().hex[:12]}"
    arrived = asyncio.Event()

    def absent_session() -> MqttBridge:
        return MqttBridge(config.mqtt, session, [topic], persistent=True)

    try:
        async with absent_session().serving(lambda _: arrived.set()) as away:
            if not await away.wait_connected(BROKER_TIMEOUT_S):
                return CheckResult(name, False, away.last_error or "could not subscribe")
        async with MqttBridge(config.mqtt, f"{session}-sender", []) as sender:
            await sender.wait_connected(BROKER_TIMEOUT_S)
            sender.publish(topic, "sent while you were away", qos=1)
        async with absent_session().serving(lambda _: arrived.set()) as back:
            await back.wait_connected(BROKER_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), KEPT_MESSAGE_WAIT_S)
    finally:
        async with MqttBridge(config.mqtt, session, []) as forget:  # ends the session
            await forget.wait_connected(BROKER_TIMEOUT_S)
    if arrived.is_set():
        return CheckResult(name, True, "a QoS 1 message sent while away was kept")
    return CheckResult(
        name,
        False,
        "a QoS 1 message sent while the session was away was lost: announcements sent while "
        "Herald restarts would be lost too",
        "mosquitto 2.0.12 and later lose them with `per_listener_settings true`: remove that "
        "line from mosquitto.conf (or set it false) and restart the broker",
    )


async def check_audio(config: Config) -> CheckResult:
    name = f"audio device '{config.audio.device}'"
    output = AlsaOutput(config.audio)
    try:
        await output.open()
    except AudioError as exc:
        return CheckResult(
            name,
            False,
            str(exc),
            "list devices with `herald devices` and set audio.device; a busy 'hw:' device "
            "cannot be shared (use 'default' or a dmix PCM)",
        )
    finally:
        await output.close()
    rate, channels = config.audio.sample_rate, config.audio.channels
    return CheckResult(name, True, f"opened at {rate} Hz, {channels} channel(s)")


async def check_voices(config: Config) -> list[CheckResult]:
    results = []
    for voice in build_voices(config):
        try:
            results.append(CheckResult(f"voice {voice.name}", True, await voice.check()))
        except VoiceError as exc:
            results.append(
                CheckResult(
                    f"voice {voice.name}",
                    False,
                    str(exc),
                    f"see [voice.{voice.name}] in the config",
                )
            )
        finally:
            await voice.aclose()
    return results
