"""What the fake WebSocket servers share: a server on loopback whose sessions tests can count.

`FakeServer` is the plumbing of tests/fake_deepgram.py, tests/fake_slng.py and
tests/fake_gateway.py: start and stop on 127.0.0.1, the port and URL, one session per accepted
socket, counters and logs as plain attributes, bounded waits on them, and ways to break every
connection. What each fake says on a socket is its own: a subclass answers the handshake
(`_process_request`, `_process_response`) and makes the session of each socket (`_session`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

JsonObject = dict[str, Any]


class Session(Protocol):
    """One accepted socket, served by `run` until it closes."""

    ws: ServerConnection

    async def run(self) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class FakeServer:
    """A WebSocket server on 127.0.0.1 whose sessions tests can count, wait for and break."""

    path = "/"  # of `url`
    open_timeout: float = 10  # of each handshake (websockets' default)

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.connections = 0  # accepted handshakes
        self.refused = 0  # refused handshakes
        self.close_log: list[tuple[int, str]] = []  # every close the server initiated
        self.sent: list[tuple[int, JsonObject]] = []  # server JSON by connection index
        self._port = port
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            process_request=self._process_request,
            process_response=self._process_response,
            max_size=None,  # a fake that limits sizes checks them itself, to close as it should
            compression=None,
            open_timeout=self.open_timeout,
            close_timeout=2,
        )

    async def stop(self) -> None:
        """Close every socket (1001) and wait until every connection handler has returned."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake is not started")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def open_connections(self) -> int:
        return len(self._sessions)

    # The bounded waits take a timeout, as the tests' brief asks, rather than relying on callers.
    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Wait (bounded) until `condition()` holds; it is re-checked whenever the fake changes."""
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_until(lambda: self.connections >= n, timeout)

    async def kill_all(self) -> None:
        """Drop every TCP connection without a close frame, as a network failure would."""
        killed = set(self._sessions)
        for session in killed:
            session.ws.transport.abort()
        await self.wait_until(lambda: not killed & self._sessions)

    async def close_all(self, code: int, reason: str) -> None:
        await asyncio.gather(*(session.close(code, reason) for session in list(self._sessions)))

    def refuse(self, connection: ServerConnection, status: int, body: str) -> Response:
        """A refusal of the handshake with this status and body, counted."""
        self.refused += 1
        self.notify()
        return connection.respond(status, body)

    def log_close(self, code: int, reason: str) -> None:
        self.close_log.append((code, reason))
        self.notify()

    def notify(self) -> None:
        """Wake every wait: something a test may be waiting for has changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    # for subclasses

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        return None

    def _session(self, ws: ServerConnection, index: int) -> Session:
        raise NotImplementedError

    async def _handle(self, ws: ServerConnection) -> None:
        session = self._session(ws, self.connections)
        self.connections += 1
        self._sessions.add(session)
        self.notify()
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self.notify()


async def sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def reap(tasks: Sequence[asyncio.Task[None] | None]) -> None:
    """Cancel the tasks, wait for them to end, and re-raise a failure of theirs if any."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for task in running:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure


def parse_object(raw: str) -> JsonObject | None:
    """The JSON object in `raw`, or None if it is not JSON or not an object."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
