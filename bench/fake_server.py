"""The tests' fake Deepgram server in a process of its own, telling the benchmark what it saw.

`python -m bench.fake_server --stats FILE [every option of tests/fake_deepgram.py]` prints its
URL on the first line of stdout, serves until SIGTERM or SIGINT, then writes FILE: the accepted
connections, every close the server initiated (its close_log, e.g. 1011 NET-0003 for age), the
start and end of every handshake and the arrival of every Flush, as time.monotonic() seconds
(the clock every process on the machine shares).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from tests.fake_deepgram import FakeDeepgram, FakeDeepgramOptions, _parse_args


class RecordingFake(FakeDeepgram):
    """The fake, noting when each handshake began (the request) and ended (the socket opened)."""

    def __init__(self, options: FakeDeepgramOptions, *, host: str, port: int) -> None:
        super().__init__(options, host=host, port=port)
        self.handshakes: list[tuple[float, float]] = []
        self._asked_at: weakref.WeakKeyDictionary[ServerConnection, float] = (
            weakref.WeakKeyDictionary()
        )

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self._asked_at[connection] = time.monotonic()
        return await super()._process_request(connection, request)

    async def _handle(self, ws: ServerConnection) -> None:
        self.handshakes.append((self._asked_at.pop(ws, time.monotonic()), time.monotonic()))
        await super()._handle(ws)

    def stats(self) -> dict[str, object]:
        flushes = [
            received["at"]
            for received in self.received
            if isinstance(received["message"], dict) and received["message"].get("type") == "Flush"
        ]
        return {
            "connections": self.connections,
            "refused": self.refused,
            "close_log": self.close_log,
            "handshakes": self.handshakes,
            "flushes": flushes,
        }


async def _serve(options: FakeDeepgramOptions, host: str, port: int) -> dict[str, object]:
    """Serve until signalled; what the fake saw."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = RecordingFake(options, host=host, port=port)
    await server.start()
    print(server.url, flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return server.stats()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--stats", type=Path, required=True)
    ours, rest = parser.parse_known_args(argv)
    options, host, port = _parse_args(rest)
    stats = asyncio.run(_serve(options, host, port))
    ours.stats.write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
