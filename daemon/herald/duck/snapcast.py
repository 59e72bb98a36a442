"""Ducking a Snapcast client (this room's), through the snapserver's JSON-RPC control.

The client is found by its id (`snapclient --hostID`) or its host name (default: this
machine's), among the clients the server knows; its 0-100 volume is scaled by 10^(level_db/20)
in a few steps over the ramp, with `Client.SetVolume`. It is put back only if it still has the
volume Herald set. For the most urgent announcements (`ducking.pause_from`) the client is
muted instead, and unmuted afterwards if it still is. The control speaks newline-delimited
JSON-RPC 2.0 on TCP (port 1705); the server's notifications that arrive meanwhile are skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

from herald.duck import DuckError, Lowered, Note
from herald.logsafe import shown

TIMEOUT_S = 3.0
STEP_S = 0.04
MAX_LINE = 1024 * 1024  # a server with many clients says a lot in Server.GetStatus


class SnapcastDucking:
    name = "snapcast"

    def __init__(self, host: str, port: int = 1705, client: str = "") -> None:
        self._host, self._port = host, port
        self._client = client or socket.gethostname()

    async def lower(self, level_db: float, ramp_s: float, note: Note) -> None:
        async with _Control(self._host, self._port) as control:
            client = await self._find(control, self._client)
            volume = _volume(client)
            before = int(volume["percent"])
            item = Lowered(client=client["id"], before=before)
            item["set"] = round(before * 10 ** (level_db / 20))
            note(item)
            await self._ramp(control, client["id"], volume, item, ramp_s)

    async def pause(self, note: Note) -> None:
        async with _Control(self._host, self._port) as control:
            client = await self._find(control, self._client)
            volume = _volume(client)
            if not volume.get("muted"):
                note(Lowered(client=client["id"], kind="pause"))
                await control.call(
                    "Client.SetVolume", {"id": client["id"], "volume": {**volume, "muted": True}}
                )

    async def restore(self, item: Lowered, ramp_s: float) -> None:
        async with _Control(self._host, self._port) as control:
            try:
                client = await self._find(control, str(item["client"]))
            except DuckError:
                return  # the client is gone (a room that left): nothing to put back
            volume = _volume(client)
            if item.get("kind") == "pause":
                if volume.get("muted"):  # else someone unmuted it already
                    volume = {**volume, "muted": False}
                    await control.call("Client.SetVolume", {"id": client["id"], "volume": volume})
            elif abs(int(volume["percent"]) - int(item["set"])) <= 1:  # else: the user's
                back = Lowered(set=int(item["before"]))
                await self._ramp(control, client["id"], volume, back, ramp_s)

    async def _find(self, control: _Control, wanted: str) -> dict[str, Any]:
        status = await control.call("Server.GetStatus")
        try:
            clients = [c for g in status["server"]["groups"] for c in g["clients"]]
        except (KeyError, TypeError):
            raise DuckError("snapserver's status has no clients list") from None
        for client in clients:
            if isinstance(client, dict) and wanted in (
                client.get("id"),
                (client.get("host") or {}).get("name"),
            ):
                _volume(client)  # (checked here: a reply without one is the server's fault)
                return client
        raise DuckError(f"snapserver knows no client '{shown(wanted, 60)}'")

    async def _ramp(
        self, control: _Control, client: str, volume: dict[str, Any], item: Lowered, ramp_s: float
    ) -> None:
        """From the volume it has to item["set"], keeping its mute as it is (a muted room stays
        so); item["set"] follows each step (a ramp cut short is put back from where it was)."""
        start, end = int(volume["percent"]), int(item["set"])
        steps = max(1, min(round(ramp_s / STEP_S), abs(end - start)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for step in range(1, steps + 1):
            percent = round(start + (end - start) * step / steps)
            await control.call(
                "Client.SetVolume", {"id": client, "volume": {**volume, "percent": percent}}
            )
            if step < steps:  # on a clock: slow calls shorten the waits, not lengthen the ramp
                await asyncio.sleep(max(began + ramp_s * step / steps - loop.time(), 0))


def _volume(client: dict[str, Any]) -> dict[str, Any]:
    """A client's volume as the server reports it: {"muted": bool, "percent": 0-100}."""
    volume = (client.get("config") or {}).get("volume")
    if not isinstance(volume, dict) or not isinstance(volume.get("percent"), int):
        raise DuckError("snapserver reported a client without a volume")
    return {"muted": bool(volume.get("muted")), "percent": volume["percent"]}


class _Control:
    """One connection to the snapserver's control port."""

    def __init__(self, host: str, port: int) -> None:
        self._where = f"{host}:{port}"
        self._host, self._port = host, port
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> _Control:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                self._reader, self._writer = await asyncio.open_connection(
                    self._host, self._port, limit=MAX_LINE
                )
        except (OSError, TimeoutError) as exc:
            raise DuckError(f"snapserver at {self._where}: {shown(str(exc), 120)}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert self._reader is not None
        assert self._writer is not None
        ident = next(self._ids)
        request: dict[str, Any] = {"id": ident, "jsonrpc": "2.0", "method": method}
        if params is not None:
            request["params"] = params
        try:
            async with asyncio.timeout(TIMEOUT_S):
                self._writer.write(json.dumps(request).encode() + b"\r\n")
                await self._writer.drain()
                while True:
                    line = await self._reader.readline()
                    if not line:
                        raise DuckError(f"snapserver at {self._where} closed the connection")
                    reply = json.loads(line)
                    if isinstance(reply, dict) and reply.get("id") == ident:
                        break  # (anything else is a notification: skipped)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DuckError(f"snapserver at {self._where}: {shown(str(exc), 120)}") from None
        if "error" in reply:
            raise DuckError(f"snapserver: {method}: {shown(str(reply['error']), 120)}")
        return reply.get("result")
