"""Ducking on a PulseAudio or PipeWire (pipewire-pulse) server, through `pactl`.

Every other stream (sink input) on the server Herald plays to is lowered by `level_db` on its
own volume, in the server's dB scale (what `pactl` prints: PulseAudio's volumes are cubic, so
-20 dB multiplies the raw value by 10^(-20/60)); the sink's master volume is not touched, nor is
Herald's own stream (its `application.process.id` is Herald's). The ramp is a few steps
linear in dB. A stream is put back only if it still is the same stream (index and process id)
with the volume Herald set; a user who moved it meanwhile keeps their volume. For the most
urgent announcements (`ducking.pause_from`) the streams are muted instead, and unmuted
afterwards if they still are.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from herald.duck import DuckError, Lowered, Note
from herald.logsafe import shown

PACTL_TIMEOUT_S = 3.0
STEP_S = 0.04  # a ramp moves the volume this often


class PulseDucking:
    name = "pulse"

    def __init__(self, server: str = "") -> None:
        self._server = ["--server", server] if server else []

    async def lower(self, level_db: float, ramp_s: float, note: Note) -> None:
        factor = 10 ** (level_db / 60)
        lowered = []
        for stream in await self._streams():
            if not self._theirs(stream):
                continue
            before = _volumes(stream)
            after = [max(round(v * factor), 0) for v in before]
            item = Lowered(index=stream["index"], pid=_pid(stream), before=before, set=after)
            note(item)
            lowered.append(item)
        await asyncio.gather(*(self._ramp(item, "before", "set", ramp_s) for item in lowered))

    async def pause(self, note: Note) -> None:
        for stream in await self._streams():
            if not self._theirs(stream) or stream.get("mute"):
                continue
            note(Lowered(index=stream["index"], pid=_pid(stream), kind="pause"))
            await self._quietly("set-sink-input-mute", str(stream["index"]), "1")

    async def restore(self, item: Lowered, ramp_s: float) -> None:
        stream = {s["index"]: s for s in await self._streams()}.get(item.get("index"))
        if stream is None or _pid(stream) != item.get("pid"):
            return  # the player stopped meanwhile
        if item.get("kind") == "pause":
            if stream.get("mute"):  # else someone unmuted it already
                await self._quietly("set-sink-input-mute", str(item["index"]), "0")
        elif _volumes(stream) == [int(v) for v in item["set"]]:  # else: the user's volume
            await self._ramp(item, "set", "before", ramp_s)

    @staticmethod
    def _theirs(stream: dict[str, Any]) -> bool:
        """Not Herald's own stream."""
        return _pid(stream) != str(os.getpid())

    async def _ramp(self, item: Lowered, start: str, end: str, ramp_s: float) -> None:
        """From item[start] to item[end]. Lowering, item["set"] follows each step (a ramp cut
        short is put back from where it stopped)."""
        first, last = [int(v) for v in item[start]], [int(v) for v in item[end]]
        steps = max(1, round(ramp_s / STEP_S))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for step in range(1, steps + 1):
            share = step / steps
            values = [_between(a, b, share) for a, b in zip(first, last, strict=True)]
            index = str(item["index"])
            if not await self._quietly("set-sink-input-volume", index, *map(str, values)):
                return  # the stream is gone (its player stopped)
            if end == "set":
                item["set"] = values
            if step < steps:  # on a clock: slow calls shorten the waits, not lengthen the ramp
                await asyncio.sleep(max(began + ramp_s * step / steps - loop.time(), 0))

    async def _quietly(self, *args: str) -> bool:
        """A pactl call on one stream: False if it failed (the stream went away meanwhile)."""
        try:
            await self._pactl(*args)
        except DuckError:
            return False
        return True

    async def _streams(self) -> list[dict[str, Any]]:
        out = await self._pactl("-f", "json", "list", "sink-inputs")
        try:
            streams = json.loads(out)
        except ValueError as exc:
            raise DuckError(f"pactl printed no JSON ({exc}); pactl 16 or later is needed") from None
        return [s for s in streams if isinstance(s, dict) and isinstance(s.get("index"), int)]

    async def _pactl(self, *args: str) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                "pactl",
                *self._server,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise DuckError(f"cannot run pactl: {exc.strerror}") from None
        try:
            async with asyncio.timeout(PACTL_TIMEOUT_S):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DuckError(f"pactl took over {PACTL_TIMEOUT_S:.0f} s") from None
        if process.returncode:
            said = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no reason"]
            raise DuckError(f"pactl: {shown(said[0], 200)}")
        return out.decode("utf-8", "replace")


def _pid(stream: dict[str, Any]) -> str | None:
    """The process id of the program that plays the stream, as the server knows it."""
    pid = stream.get("properties", {}).get("application.process.id")
    return None if pid is None else str(pid)


def _volumes(stream: dict[str, Any]) -> list[int]:
    """A stream's raw volume per channel, in its channel map's order."""
    volume = stream.get("volume")
    if not isinstance(volume, dict):
        return []
    return [int(c["value"]) for c in volume.values() if isinstance(c, dict) and "value" in c]


def _between(a: int, b: int, share: float) -> int:
    """The raw volume `share` of the way from a to b, in dB (cubic volumes: geometric)."""
    if share >= 1:
        return b
    if a <= 0 or b <= 0:
        return round(a + (b - a) * share)
    ratio: float = (b / a) ** share
    return round(a * ratio)
