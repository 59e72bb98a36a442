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

from mpd.asyncio import MPDClient  # type: ignore[import-untyped]
from mpd.base import MPDError  # type: ignore[import-untyped]

from herald.duck import DuckError, Lowered, Note
from herald.logsafe import shown

CONNECT_TIMEOUT_S = 3.0
STEP_S = 0.04


class MpdDucking:
    name = "mpd"

    def __init__(self, host: str, port: int = 6600, password: str | None = None) -> None:
        self._host, self._port = host, port
        self._password = password

    @property
    def _address(self) -> str:
        return f"{self._host}:{self._port}"

    async def lower(self, level_db: float, ramp_s: float, note: Note) -> None:
        async with self._client() as client:
            before = await self._volume(client)
            item = Lowered(address=self._address, before=before)
            item["set"] = round(before * 10 ** (level_db / 20))
            note(item)
            await self._ramp(client, before, item, ramp_s)
            item["set"] = await self._volume(client)  # as MPD's mixer rounded it

    async def pause(self, note: Note) -> None:
        async with self._client() as client:
            if (await client.status()).get("state") == "play":  # else: nothing to pause
                note(Lowered(address=self._address, kind="pause"))
                await client.pause(1)

    async def restore(self, item: Lowered, ramp_s: float) -> None:
        async with self._client() as client:
            if item.get("kind") == "pause":
                if (await client.status()).get("state") == "pause":  # else: the user's doing
                    await client.pause(0)
                return
            now = await self._volume(client)
            if abs(now - int(item["set"])) <= 1:  # else the user set a volume: theirs stands
                await self._ramp(client, now, Lowered(set=int(item["before"])), ramp_s)

    async def _ramp(self, client: MPDClient, start: int, item: Lowered, ramp_s: float) -> None:
        """From `start` to item["set"]; item["set"] follows each step (a ramp cut short is
        put back from where it stopped)."""
        end = int(item["set"])
        steps = max(1, min(round(ramp_s / STEP_S), abs(end - start)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for step in range(1, steps + 1):
            item["set"] = round(start + (end - start) * step / steps)
            await client.setvol(item["set"])
            if step < steps:  # on a clock: slow calls shorten the waits, not lengthen the ramp
                await asyncio.sleep(max(began + ramp_s * step / steps - loop.time(), 0))

    async def _volume(self, client: MPDClient) -> int:
        volume = int((await client.status()).get("volume", -1))
        if volume < 0:
            raise DuckError(f"MPD at {self._address} has no volume control")
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

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self._client.disconnect()
        if isinstance(exc, (OSError, ConnectionError, MPDError)):  # during a command
            host, port = self._where
            raise DuckError(f"MPD at {host}:{port}: {shown(str(exc), 120)}") from None
