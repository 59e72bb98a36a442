"""Ducking an MPD (Music Player Daemon), through its protocol (python-mpd2's asyncio client).

For the most urgent announcements (`ducking.pause_from`) a playing MPD is paused instead, and
plays on afterwards if it is still paused then (a user who stopped it or played meanwhile
keeps that).

MPD's volume is 0-100 on whatever mixer it has: lowering by `level_db` scales it by
10^(level_db/20) (70 becomes 7 at -20 dB), in a few steps over the ramp. It is put back only if
MPD still has the volume Herald set. An MPD without a volume control (`volume: -1`) is said so
once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mpd.asyncio import MPDClient  # type: ignore[import-untyped]
from mpd.base import MPDError  # type: ignore[import-untyped]

from herald.duck import DuckError, Lowered
from herald.logsafe import shown

CONNECT_TIMEOUT_S = 3.0
STEP_S = 0.04


class MpdDucking:
    name = "mpd"

    def __init__(self, address: str, password: str | None = None) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = (host or address), int(port) if host else 6600
        self._password = password

    async def lower(self, level_db: float, ramp_s: float) -> list[Lowered]:
        try:
            async with self._client() as client:
                before = await self._volume(client)
                target = round(before * 10 ** (level_db / 20))
                await self._ramp(client, before, target, ramp_s)
        except (OSError, ConnectionError, MPDError) as exc:
            raise DuckError(f"MPD at {self._host}:{self._port}: {shown(str(exc), 120)}") from None
        return [Lowered(address=f"{self._host}:{self._port}", before=before, set=target)]

    async def pause(self) -> list[Lowered]:
        try:
            async with self._client() as client:
                if (await client.status()).get("state") != "play":
                    return []  # nothing playing: nothing to pause
                await client.pause(1)
        except (OSError, ConnectionError, MPDError) as exc:
            raise DuckError(f"MPD at {self._host}:{self._port}: {shown(str(exc), 120)}") from None
        return [Lowered(address=f"{self._host}:{self._port}", kind="pause")]

    async def restore(self, lowered: Sequence[Lowered], ramp_s: float) -> None:
        try:
            async with self._client() as client:
                paused = any(item.get("kind") == "pause" for item in lowered)
                if paused and (await client.status()).get("state") == "pause":  # else: theirs
                    await client.pause(0)
                now = await self._volume(client)
                for item in lowered:
                    if item.get("kind") != "pause" and now == item.get("set"):
                        await self._ramp(client, now, int(item["before"]), ramp_s)
        except (OSError, ConnectionError, MPDError) as exc:
            raise DuckError(f"MPD at {self._host}:{self._port}: {shown(str(exc), 120)}") from None

    async def _ramp(self, client: MPDClient, start: int, end: int, ramp_s: float) -> None:
        steps = max(1, min(round(ramp_s / STEP_S), abs(end - start)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for step in range(1, steps + 1):
            await client.setvol(round(start + (end - start) * step / steps))
            if step < steps:  # on a clock: slow calls shorten the waits, not lengthen the ramp
                await asyncio.sleep(max(began + ramp_s * step / steps - loop.time(), 0))

    async def _volume(self, client: MPDClient) -> int:
        status = await client.status()
        volume = int(status.get("volume", -1))
        if volume < 0:
            raise DuckError(f"MPD at {self._host}:{self._port} has no volume control")
        return volume

    def _client(self) -> _Connected:
        return _Connected(self._host, self._port, self._password)


class _Connected:
    """An MPD connection for one lowering or restoring."""

    def __init__(self, host: str, port: int, password: str | None) -> None:
        self._where = (host, port)
        self._password = password
        self._client = MPDClient()

    async def __aenter__(self) -> MPDClient:
        host, port = self._where
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._client.connect(host, port)
                if self._password:
                    await self._client.password(self._password)
        except TimeoutError:
            raise DuckError(f"MPD at {host}:{port} did not answer") from None
        except (OSError, ConnectionError, MPDError) as exc:  # MPDError: a wrong password
            raise DuckError(f"MPD at {host}:{port}: {shown(str(exc), 120)}") from None
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        self._client.disconnect()
