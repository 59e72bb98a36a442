"""The cold-connect client: what Herald is compared with.

It follows the pattern of Deepgram's getting-started example for streaming text to speech: for
each announcement it opens a new WebSocket to /v1/speak, sends Speak and Flush, and plays the
audio as it arrives, until Flushed. To be measured the same way as Herald, it takes its
announcements from MQTT (QoS 1, like Herald) and plays on an ALSA PCM opened once, with Herald's
format, period and buffer; after each announcement it publishes `{"id", "first_write", "error"}`
on its done topic, `first_write` being the moment (time.monotonic()) it wrote the first audio.

    python -m bench.baseline --host H --port P --topic T --done-topic D --url ws://... --device PCM

The API key comes from $DEEPGRAM_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

RATE = 48000
PERIOD_FRAMES = 960  # 20 ms, Herald's default period
PERIODS = 4  # Herald's default buffer


def open_pcm(device: str) -> Any:
    import alsaaudio

    return alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        mode=alsaaudio.PCM_NORMAL,
        device=device,
        rate=RATE,
        channels=1,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=PERIOD_FRAMES,
        periods=PERIODS,
    )


async def speak_once(url: str, key: str, pcm: Any, text: str) -> dict[str, Any]:
    """One announcement on a socket of its own; when the first audio was written, or why not."""
    first_write: float | None = None
    error: str | None = None
    try:
        async with connect(url, additional_headers={"Authorization": f"Token {key}"}) as ws:
            await ws.send(json.dumps({"type": "Speak", "text": text}))
            await ws.send(json.dumps({"type": "Flush"}))
            async for message in ws:
                if isinstance(message, bytes):
                    if first_write is None:
                        first_write = time.monotonic()
                    pcm.write(message)
                elif json.loads(message).get("type") == "Flushed":
                    break
            await ws.send(json.dumps({"type": "Close"}))
    except (OSError, TimeoutError, WebSocketException) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        pcm.drop()  # the null device has played it all: end the sound (the file plugin writes)
    return {"first_write": first_write, "error": error}


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, inbox.put_nowait, None)
    query = urlencode({"model": args.model, "encoding": "linear16", "sample_rate": RATE})
    url = f"{args.url}?{query}"
    key = os.environ["DEEPGRAM_API_KEY"]
    pcm = open_pcm(args.device)
    subscribed = asyncio.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-cold-{os.getpid()}")

    def on_connect(c: paho.Client, *_: Any) -> None:
        c.subscribe(args.topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set)

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        loop.call_soon_threadsafe(inbox.put_nowait, bytes(message.payload))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        print("ready", flush=True)
        while (payload := await inbox.get()) is not None:
            request = json.loads(payload)
            result = await speak_once(url, key, pcm, request["text"])
            client.publish(args.done_topic, json.dumps({"id": request["id"], **result}), qos=1)
    finally:
        client.disconnect()
        client.loop_stop()
        with contextlib.suppress(Exception):
            pcm.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The cold-connect client of the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--done-topic", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--model", default="aura-2-thalia-en")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
