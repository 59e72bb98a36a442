"""Herald's ESPHome API, driven by aioesphomeapi's own client (the one Home Assistant uses):
the handshake plaintext and encrypted, the device and its media player, commands, states, and
what a client that does not speak the protocol gets."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import (
    EncryptionPlaintextAPIError,
    InvalidEncryptionKeyAPIError,
    RequiresEncryptionAPIError,
)
from aioesphomeapi.model import (
    MediaPlayerCommand,
    MediaPlayerEntityFeature,
    MediaPlayerFormatPurpose,
    MediaPlayerInfo,
    MediaPlayerState,
)
from aioesphomeapi.model import MediaPlayerEntityState as PlayerState

from herald.config import Config
from herald.controls import ControlPanel, Controls
from herald.dispatcher import Dispatcher
from herald.esphome.player import MediaPlayer
from herald.esphome.server import Device, EsphomeServer
from herald.esphome.service import device_name, stable_mac
from herald.events import Event

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


@dataclass
class Actions:
    """What the media player asked Herald to do."""

    played: list[tuple[str, bool]] = field(default_factory=list)
    stops: int = 0
    level: float = 0.8
    silent: bool = False

    def play(self, url: str, announce: bool) -> str | None:
        self.played.append((url, announce))
        return f"id{len(self.played)}"

    def stop(self) -> None:
        self.stops += 1

    def set_volume(self, volume: float) -> None:
        self.level = volume

    def volume(self) -> float:
        return self.level

    def set_muted(self, muted: bool) -> None:
        self.silent = muted

    def muted(self) -> bool:
        return self.silent


@asynccontextmanager
async def herald_device(key: bytes | None = None) -> AsyncIterator[tuple[EsphomeServer, Actions]]:
    actions = Actions()
    server: EsphomeServer | None = None

    def changed() -> None:
        assert server is not None
        server.state_changed()

    player = MediaPlayer("Herald kitchen", "kitchen_speaker", 48000, actions, changed)
    device = Device("herald-kitchen", "Herald kitchen", "02:11:22:33:44:55", key)
    server = EsphomeServer(device, player, port=0, host="127.0.0.1")
    await server.start()
    try:
        yield server, actions
    finally:
        await server.close()


def client_for(server: EsphomeServer, psk: str | None = None) -> APIClient:
    return APIClient("127.0.0.1", server.port, None, noise_psk=psk, client_info="herald-test")


async def until(condition: Callable[[], bool], within_s: float = 5) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 (the client's callbacks set no event)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "noise"])
def test_home_assistants_client_connects_and_finds_one_media_player(encrypted: bool) -> None:
    async def scenario() -> None:
        key = base64.b64decode(KEY) if encrypted else None
        async with herald_device(key) as (server, _):
            client = client_for(server, KEY if encrypted else None)
            await client.connect(login=True)
            try:
                info = await client.device_info()
                assert info.name == "herald-kitchen"
                assert info.friendly_name == "Herald kitchen"
                assert info.mac_address == "02:11:22:33:44:55"
                assert info.manufacturer == "Herald" and info.project_version
                assert info.api_encryption_supported is encrypted
                entities, services = await client.list_entities_services()
                [player] = entities
                assert isinstance(player, MediaPlayerInfo) and services == []
                # The device's main entity: no name of its own, Home Assistant uses the device's.
                assert player.object_id == "kitchen_speaker" and player.name == ""
                flags = MediaPlayerEntityFeature(player.feature_flags)
                assert MediaPlayerEntityFeature.MEDIA_ANNOUNCE in flags
                assert MediaPlayerEntityFeature.VOLUME_SET in flags
                assert MediaPlayerEntityFeature.STOP in flags
                formats = {
                    (f.format, f.sample_rate, f.num_channels, f.purpose)
                    for f in player.supported_formats
                }
                assert ("wav", 48000, 1, MediaPlayerFormatPurpose.ANNOUNCEMENT) in formats
                assert ("wav", 48000, 1, MediaPlayerFormatPurpose.DEFAULT) in formats
            finally:
                await client.disconnect()

    asyncio.run(scenario())


def test_commands_reach_herald_and_every_state_change_is_sent() -> None:
    async def scenario() -> None:
        async with herald_device() as (server, actions):
            client = client_for(server)
            await client.connect(login=True)
            states: list[PlayerState] = []
            client.subscribe_states(
                lambda s: states.append(s) if isinstance(s, PlayerState) else None
            )
            await until(lambda: len(states) >= 1)
            assert states[0].state == MediaPlayerState.IDLE and states[0].volume == pytest.approx(
                0.8
            )
            key = server.player.key

            client.media_player_command(key, media_url="http://ha:8123/a.wav", announcement=True)
            client.media_player_command(key, media_url="http://ha:8123/song.wav")
            await until(lambda: len(actions.played) == 2)
            assert actions.played == [
                ("http://ha:8123/a.wav", True),
                ("http://ha:8123/song.wav", False),
            ]

            client.media_player_command(key, volume=0.35)
            await until(lambda: actions.level == pytest.approx(0.35))
            await until(lambda: states[-1].volume == pytest.approx(0.35))
            client.media_player_command(key, command=MediaPlayerCommand.MUTE)
            await until(lambda: states[-1].muted)
            assert actions.muted() and states[-1].volume == pytest.approx(0.35)  # level kept
            client.media_player_command(key, volume=0.5)  # set while muted: stays muted
            await until(lambda: states[-1].volume == pytest.approx(0.5))
            assert states[-1].muted and actions.muted()
            client.media_player_command(key, command=MediaPlayerCommand.UNMUTE)
            await until(lambda: not states[-1].muted)
            assert not actions.muted() and actions.level == pytest.approx(0.5)
            client.media_player_command(key, command=MediaPlayerCommand.STOP)
            await until(lambda: actions.stops == 1)

            # What Herald speaks sets the state: an announcement, the media, then nothing;
            # each change is a message of its own, none merged away. Herald knows an
            # announcement (ANNOUNCING) from media, and sends both as PLAYING, as ESPHome does:
            # Home Assistant has no announcing state.
            before, known = len(states), []
            for event in (
                Event("started", "id1"),
                Event("finished", "id1"),
                Event("started", "id2"),
                Event("preempted", "id2", details={"requeued": True}),
                Event("started", "id2"),
                Event("finished", "id2"),
            ):
                server.player.note(event)
                known.append(server.player.state)
            await until(lambda: len(states) >= before + 6)
            playing, idle = MediaPlayerState.PLAYING, MediaPlayerState.IDLE
            assert [s.state for s in states[before:]] == [playing, idle] * 3
            assert known == [MediaPlayerState.ANNOUNCING, idle, playing, idle, playing, idle]
            await client.disconnect()

    asyncio.run(scenario())


def test_only_a_client_with_the_key_gets_in() -> None:
    async def scenario() -> None:
        async with herald_device(base64.b64decode(KEY)) as (server, _):
            with pytest.raises(InvalidEncryptionKeyAPIError):
                await client_for(server, OTHER_KEY).connect(login=True)
            with pytest.raises(RequiresEncryptionAPIError):
                await client_for(server, None).connect(login=True)
            good = client_for(server, KEY)  # and the server still serves
            await good.connect(login=True)
            await good.disconnect()
        async with herald_device(None) as (server, _):
            with pytest.raises(EncryptionPlaintextAPIError):
                await client_for(server, KEY).connect(login=True)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\xff\xff\xff\xff\xff\x01",  # an endless varint
        b"\x00\x7f\x01" + b"\xff" * 127,  # a Hello that is not protobuf
        random.Random(1).randbytes(4096),  # (fixed: it starts with 0xf5)
    ],
    ids=["http", "varint", "protobuf", "random"],
)
def test_a_client_that_does_not_speak_the_protocol_is_closed_with_one_line(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with herald_device() as (server, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(garbage)
            await writer.drain()
            async with asyncio.timeout(5):
                while await reader.read(1024):
                    pass  # closed by Herald
            writer.close()
            client = client_for(server)  # the next client is served as ever
            await client.connect(login=True)
            await client.disconnect()

    with caplog.at_level(logging.DEBUG, logger="herald"):
        asyncio.run(scenario())
    closed = [r for r in caplog.records if "esphome: closed" in r.getMessage()]
    assert len(closed) == 1, [r.getMessage() for r in caplog.records]
    assert all(r.exc_info is None for r in caplog.records)
    assert all(r.getMessage().isprintable() for r in caplog.records)


def test_the_device_has_a_stable_name_and_address_of_its_own(tmp_path: Any) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef\n")
    kitchen = Config.model_validate({"node_id": "Kitchen_Speaker.1"})
    hall = Config.model_validate({"node_id": "hall"})
    assert device_name(kitchen) == "herald-kitchen-speaker-1"
    assert stable_mac(kitchen, machine) == stable_mac(kitchen, machine)
    assert stable_mac(kitchen, machine) != stable_mac(hall, machine)
    assert stable_mac(kitchen, machine).startswith("02:")
    named = Config.model_validate({"esphome": {"name": "attic"}})
    assert device_name(named) == "attic"


def test_check_says_whether_the_api_is_encrypted(tmp_path: Any) -> None:
    from herald.checks import check_esphome

    key_file = tmp_path / "key"
    plain = Config.model_validate({"node_id": "attic", "esphome": {"enabled": True}})
    line = check_esphome(plain).line()
    assert line.startswith("! esphome herald-attic on port 6053: plaintext"), line
    assert "fix: sudo ./install.sh --esphome-key" in line
    key_file.write_text(KEY)
    keyed = Config.model_validate(
        {"node_id": "attic", "esphome": {"enabled": True, "encryption_key_file": str(key_file)}}
    )
    assert check_esphome(keyed).line() == (
        f"✔ esphome herald-attic on port 6053: encrypted (key from file {key_file})"
    )
    key_file.write_text("c2hvcnQ=")  # base64, but 5 bytes
    bad = check_esphome(keyed).line()
    assert bad.startswith("✘ esphome herald-attic on port 6053: config error: the ESPHome")
    assert "5 bytes, not 32" in bad and "c2hvcnQ" not in bad


def test_a_fault_in_herald_costs_the_connection_not_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with herald_device() as (server, actions):

            def broken(url: str, announce: bool) -> str | None:
                raise RuntimeError("a bug")

            actions.play = broken  # type: ignore[method-assign]
            client = client_for(server)
            await client.connect(login=True)
            client.media_player_command(server.player.key, media_url="http://ha/a.wav")
            await until(lambda: any("after an error" in r.getMessage() for r in caplog.records))
            again = client_for(server)
            await again.connect(login=True)
            assert (await again.device_info()).name == "herald-kitchen"
            await again.disconnect()

    with caplog.at_level(logging.INFO, logger="herald"):
        asyncio.run(scenario())
    [line] = [r.getMessage() for r in caplog.records if "after an error" in r.getMessage()]
    assert line.endswith("RuntimeError('a bug')")


def test_the_device_is_announced_over_mdns_as_home_assistant_looks_for_it(
    tmp_path: Any,
) -> None:
    """Home Assistant's ESPHome discovery reads `_esphomelib._tcp` records: the port, the
    `mac` (it aborts without one) and `api_encryption` when a key is needed."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    from herald.esphome.service import SERVICE_TYPE, EsphomeService
    from tests.support import free_port

    class NoQueue:
        def accept_media(self, *_: object) -> None:
            return None

        def stop_current(self) -> int:
            return 0

    async def scenario() -> tuple[Any, str]:
        port = free_port()
        config = Config.model_validate(
            {"node_id": f"mdns{port}", "esphome": {"enabled": True, "port": port}}
        )
        queue = cast(Dispatcher, NoQueue())  # mDNS needs no queue, nor the volume
        panel = ControlPanel(Controls(1.0), config.state_dir / "controls.json")
        service = EsphomeService(config, queue, panel, base64.b64decode(KEY))
        await service.start()
        browser = AsyncZeroconf(ip_version=IPVersion.V4Only)
        try:
            name = f"{service.device.name}.{SERVICE_TYPE}"
            return await browser.async_get_service_info(
                SERVICE_TYPE, name, 3000
            ), service.device.mac
        finally:
            await browser.async_close()
            await service.close()

    info, mac = asyncio.run(scenario())
    assert info is not None, "nothing answered for the record"
    assert info.properties[b"mac"] == mac.replace(":", "").lower().encode()
    assert info.properties[b"api_encryption"] == b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
    assert info.properties[b"version"] == b"1.10"
    assert info.parsed_addresses()


def test_a_daemon_without_the_esphome_api_never_loads_its_libraries() -> None:
    """aioesphomeapi, zeroconf and httpx cost about 10 MB and a tenth of a second here (more
    on a Pi Zero): loaded only when `[esphome] enabled = true`."""
    import subprocess
    import sys

    heavy = ("httpx", "aioesphomeapi", "zeroconf", "noise", "google.protobuf")
    script = (
        "import sys; import herald.app, herald.cli, herald.checks; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_a_client_that_never_says_hello_is_closed_when_it_is_due(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slot taken by clients that say nothing, or trickle a byte at a time: each holds
    its slot only until its hello is due (the whole handshake, not each read), and Home
    Assistant gets in after that."""
    import herald.esphome.server as server_module

    monkeypatch.setattr(server_module, "HANDSHAKE_TIMEOUT_S", 0.5)

    async def scenario() -> None:
        async with herald_device() as (server, _):
            _, trickler = await asyncio.open_connection("127.0.0.1", server.port)
            silent = [
                await asyncio.open_connection("127.0.0.1", server.port)
                for _ in range(server_module.MAX_CLIENTS - 1)
            ]
            for _ in range(4):  # a byte every 0.2 s: each read comes in time, the hello never
                trickler.write(b"\x00")
                await asyncio.sleep(0.2)
            await until(lambda: any("say hello in time" in r.getMessage() for r in caplog.records))
            client = client_for(server)
            await client.connect(login=True)
            await client.disconnect()
            for _, writer in silent:
                writer.close()
            trickler.close()

    with caplog.at_level(logging.INFO, logger="herald"):
        asyncio.run(scenario())
