"""Herald on Home Assistant's ESPHome integration: the API server, its media player wired to the
queue and the volume, and the mDNS record that lets Home Assistant discover it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from herald.announcement import PRIORITY_LEVELS
from herald.config import Config, ConfigError, find_secret
from herald.controls import ControlPanel
from herald.dispatcher import Dispatcher
from herald.esphome.noise import decode_key
from herald.esphome.player import MediaPlayer
from herald.esphome.server import API_VERSION, Device, EsphomeServer
from herald.events import Event

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_esphomelib._tcp.local."
SOURCE = "esphome"


def device_name(config: Config) -> str:
    """ESPHome's name for this device: `esphome.name`, else `herald-<node_id>` made to fit."""
    if config.esphome.name:
        return config.esphome.name
    slug = re.sub(r"[^a-z0-9-]+", "-", config.node_id.lower()).strip("-") or "speaker"
    return f"herald-{slug}"[:31].rstrip("-")


def stable_mac(config: Config, machine_id: Path = Path("/etc/machine-id")) -> str:
    """A MAC-style address that stays the same for this node on this machine: Home Assistant
    keys the device on it. Locally administered (02:...), so it is nobody's real address."""
    try:
        machine = machine_id.read_text().strip()
    except OSError:
        machine = socket.gethostname()
    digest = hashlib.blake2b(f"{machine}/{config.node_id}".encode(), digest_size=5).digest()
    return ":".join(f"{byte:02X}" for byte in (0x02, *digest))


def encryption_key(config: Config) -> bytes | None:
    """The Noise key, if one is set anywhere; ConfigError (never showing it) if it is bad."""
    source = find_secret(config.esphome.encryption_key_file, "HERALD_ESPHOME_KEY", "esphome_key")
    if source.value is None:
        return None
    try:
        return decode_key(source.value)
    except ValueError as exc:
        raise ConfigError(
            [f"config error: the ESPHome encryption key from {source.where} is {exc}"]
        ) from None


class _Actions:
    """What the media player's commands do: the queue, and the one volume Herald has."""

    def __init__(self, config: Config, dispatcher: Dispatcher, panel: ControlPanel) -> None:
        self._cfg = config.esphome
        self._dispatcher = dispatcher
        self._panel = panel

    def play(self, url: str, announce: bool) -> str | None:
        level = self._cfg.announce_priority if announce else self._cfg.media_priority
        taken = self._dispatcher.accept_media(url, PRIORITY_LEVELS[level], SOURCE)
        return None if taken is None else taken.id

    def stop(self) -> None:
        if not self._dispatcher.stop_current():
            log.info("esphome: stop: nothing was playing")

    def set_volume(self, volume: float) -> None:
        self._panel.set_volume(volume)

    def volume(self) -> float:
        return self._panel.controls.volume

    def set_muted(self, muted: bool) -> None:
        self._panel.set_muted(muted)

    def muted(self) -> bool:
        return self._panel.controls.muted


class EsphomeService:
    """The ESPHome side of one run of the daemon (rebuilt on a reload, like the MQTT side)."""

    def __init__(
        self,
        config: Config,
        dispatcher: Dispatcher,
        panel: ControlPanel,
        key: bytes | None,
    ) -> None:
        self._config = config
        self.device = Device(
            name=device_name(config),
            friendly_name=config.home_assistant.name or f"Herald {config.node_id}",
            mac=stable_mac(config),
            key=key,
        )
        actions = _Actions(config, dispatcher, panel)
        self.player = MediaPlayer(
            name=config.home_assistant.name or f"Herald {config.node_id}",
            object_id=f"{config.node_id}_speaker",
            sample_rate=config.audio.sample_rate,
            actions=actions,
            changed=self._state_changed,
        )
        self.server = EsphomeServer(self.device, self.player, config.esphome.port)
        self._zeroconf: tuple[AsyncZeroconf, AsyncServiceInfo] | None = None

    def _state_changed(self) -> None:
        self.server.state_changed()

    def note(self, event: Event) -> None:
        """Every event of Herald's: the media player's state follows what is spoken."""
        self.player.note(event)

    def volume_changed(self) -> None:
        self.player.volume_changed()

    @property
    def port(self) -> int:
        return self._config.esphome.port

    async def start(self) -> None:
        await self.server.start()
        if self._config.esphome.mdns:
            await self._announce()

    async def close(self) -> None:
        await self._withdraw()
        await self.server.close()

    async def _announce(self) -> None:
        """The mDNS record Home Assistant discovers ESPHome devices by."""
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        properties = {
            "mac": self.device.mac.replace(":", "").lower(),
            "version": ".".join(str(part) for part in API_VERSION),
            "friendly_name": self.device.friendly_name,
            "platform": "Herald",
            "network": "ethernet",
        }
        if self.device.key is not None:
            properties["api_encryption"] = "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.device.name}.{SERVICE_TYPE}",
            port=self.server.port,
            properties=properties,
            server=f"{self.device.name}.local.",
            parsed_addresses=_addresses(),
        )
        try:
            zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
            await zeroconf.async_register_service(info, allow_name_change=True)
        except Exception as exc:  # no multicast here: Home Assistant can still add it by address
            log.warning("esphome: cannot announce over mDNS (%s); add Herald by its address", exc)
            return
        self._zeroconf = (zeroconf, info)
        log.info("esphome: announced as %s over mDNS", self.device.name)

    async def _withdraw(self) -> None:
        if self._zeroconf is None:
            return
        zeroconf, info = self._zeroconf
        self._zeroconf = None
        try:
            await zeroconf.async_unregister_service(info)
            await zeroconf.async_close()
        except Exception as exc:
            log.debug("esphome: mDNS: %s", exc)


def _addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (what ifaddr, zeroconf's, lists)."""
    import ifaddr

    found = [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]
    return found or ["127.0.0.1"]


def build_esphome(config: Config, dispatcher: Dispatcher, panel: ControlPanel) -> EsphomeService:
    return EsphomeService(config, dispatcher, panel, encryption_key(config))
