"""Media from a URL (herald/media.py) against a real HTTP(S) server on loopback: WAVs of every
supported form decoded as they arrive, and every way a URL can fail said in one line that never
shows the URL's query string or userinfo.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import logging
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from herald.audio.dsp import Samples
from herald.logsafe import where
from herald.media import MediaError, WavDecoder, stream_media

TONE_HZ = 1000.0
SECRET = "secret"
BIG = 10_000_000  # max_bytes when the limit is not what a test is about

# --- WAV files -----------------------------------------------------------------------------------


def tone(seconds: float, rate: int, channels: int = 1, level: float = 0.5) -> npt.NDArray[Any]:
    """A TONE_HZ sine at `level` of full scale, the same in every channel: (frames, channels)."""
    t = np.arange(round(seconds * rate)) / rate
    mono = level * np.sin(2 * np.pi * TONE_HZ * t)
    return np.repeat(mono[:, None], channels, axis=1)


def wav(
    frames: npt.NDArray[Any],
    rate: int,
    *,
    bits: int = 16,
    floating: bool = False,
    data_size: int | None = None,
    before_data: bytes = b"",
    after_data: bytes = b"",
    extensible: bool = False,
    rf64: bool = False,
) -> bytes:
    """`frames` (floats in -1..1, one column per channel) as a WAV file's bytes."""
    channels = frames.shape[1]
    if floating:
        data = frames.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.round(frames * 8388607).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        full = 2 ** (bits - 1) - 1
        data = np.round(frames * full).astype("<i2" if bits == 16 else "<i4").tobytes()
    block = channels * bits // 8
    tag = 3 if floating else 1
    if extensible:
        guid = struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = struct.pack(
            "<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0
        )
        fmt += guid
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    size = len(data) if data_size is None else data_size
    ds64 = b""
    if rf64:
        ds64 = b"ds64" + struct.pack("<IQQQI", 28, 0, len(data), len(data) // block, 0)
        size = 0xFFFFFFFF
    pad = b"\0" if len(data) % 2 else b""
    body = (
        b"WAVE"
        + ds64
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + before_data
        + b"data"
        + struct.pack("<I", size)
        + data
        + pad
        + after_data
    )
    riff_size = 0xFFFFFFFF if rf64 else len(body)
    return (b"RF64" if rf64 else b"RIFF") + struct.pack("<I", riff_size) + body


def chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


LIST_INFO = chunk(b"LIST", b"INFOINAM\x05\0\0\0tone\0")  # odd length: a pad byte follows


def dominant_hz(samples: Samples, rate: int) -> float:
    """The strongest frequency (Hann-windowed FFT peak with parabolic refinement)."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / x.size)


def assert_tone(samples: Samples, rate: int, seconds: float, level: float = 0.5) -> None:
    """`samples` are the TONE_HZ sine at `level`, lasting `seconds` (±1%)."""
    assert samples.dtype == np.int16
    assert abs(samples.size - seconds * rate) <= 0.01 * seconds * rate
    assert abs(dominant_hz(samples, rate) - TONE_HZ) < 2.0
    middle = samples[samples.size // 4 : -samples.size // 4].astype(np.float64)
    rms = float(np.sqrt(np.mean(middle**2)))
    assert rms == pytest.approx(level * 32768 / np.sqrt(2), rel=0.02)


# --- the server ----------------------------------------------------------------------------------

Route = Callable[["Handler"], None]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append(self.path)
        route = self.server.routes.get(path)
        if route is None:
            self.reply(404, b"<html><body>not found</body></html>", "text/html")
            return
        route(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests say what matters."""

    def reply(
        self, status: int, body: bytes, content_type: str = "audio/wav", length: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def start_chunked(self, content_type: str = "audio/wav") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.closing = threading.Event()  # set at teardown: stalled handlers return
        self.released = threading.Event()  # the slow route waits on it before its last bytes
        self.sent_all = threading.Event()  # the slow route has sent its last byte

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-reply is what several tests do on purpose."""

    def serve(self, path: str, body: bytes, content_type: str = "audio/wav") -> str:
        self.routes[path] = lambda h: h.reply(200, body, content_type)
        return self.url(path)


@contextlib.contextmanager
def running(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    server = Server(tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    with running() as started:
        yield started


# --- running the generator -----------------------------------------------------------------------


def collect(url: str, rate: int, **options: Any) -> list[Samples]:
    """Every piece stream_media yields for `url`."""
    options.setdefault("max_bytes", BIG)
    options.setdefault("timeout_s", 10.0)

    async def pieces() -> list[Samples]:
        return [piece async for piece in stream_media(url, rate, **options)]

    return asyncio.run(asyncio.wait_for(pieces(), 20))


def failure(url: str, rate: int = 16000, **options: Any) -> tuple[str, list[Samples]]:
    """The MediaError's message for `url`, and the pieces yielded before it."""
    options.setdefault("max_bytes", BIG)
    options.setdefault("timeout_s", 10.0)
    got: list[Samples] = []

    async def pieces() -> None:
        async for piece in stream_media(url, rate, **options):
            got.append(piece)

    with pytest.raises(MediaError) as caught:
        asyncio.run(asyncio.wait_for(pieces(), 20))
    message = str(caught.value)
    assert "\n" not in message
    return message, got


# --- where() -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://ha.local:8123/api/tts_proxy/a.wav", "http://ha.local:8123/api/tts_proxy/a.wav"),
        ("https://HA.example/x.wav?authSig=secret#frag", "https://ha.example/x.wav"),
        ("http://user:secret@10.0.0.2:8123/m.wav?a=b", "http://10.0.0.2:8123/m.wav"),
        ("http://secret@host/m.wav", "http://host/m.wav"),
        ("HTTP://[fe80::1]:8080/a.wav?authSig=secret", "http://[fe80::1]:8080/a.wav"),
        ("http://host", "http://host"),
        ("http://user:secret@host:notaport/x?y=secret", "http://host:notaport/x"),
        ("file:///etc/passwd", "file:///etc/passwd"),
        ("http://host/a\tb\n?c", "http://host/ab"),  # urlsplit drops tabs and newlines
    ],
)
def test_where_shows_no_userinfo_query_or_fragment(url: str, expected: str) -> None:
    assert where(url) == expected


def test_where_cuts_a_long_path() -> None:
    shown = where("http://host/" + "a" * 1000 + "?authSig=secret")
    assert len(shown) < 200
    assert SECRET not in shown


# --- audio ---------------------------------------------------------------------------------------

FORMATS = [
    pytest.param(dict(rate=16000, channels=1, bits=16), 48000, id="16k-mono-16bit->48k"),
    pytest.param(dict(rate=44100, channels=2, bits=24), 16000, id="44.1k-stereo-24bit->16k"),
    pytest.param(
        dict(rate=48000, channels=1, bits=32, floating=True, data_size=0xFFFFFFFF),
        22050,
        id="48k-float32-size-unknown->22.05k",
    ),
    pytest.param(
        dict(rate=22050, channels=2, bits=16, data_size=0, before_data=LIST_INFO),
        24000,
        id="22.05k-stereo-size-0-LIST->24k",
    ),
    pytest.param(dict(rate=8000, channels=1, bits=8), 16000, id="8k-8bit->16k"),
    pytest.param(dict(rate=32000, channels=3, bits=32), 24000, id="32k-3ch-int32->24k"),
    pytest.param(
        dict(rate=48000, channels=2, bits=24, extensible=True), 48000, id="extensible-24bit"
    ),
    pytest.param(dict(rate=24000, channels=8, bits=64, floating=True), 24000, id="8ch-float64"),
    pytest.param(dict(rate=44100, channels=2, bits=16, rf64=True), 22050, id="rf64"),
    pytest.param(
        dict(rate=16000, channels=1, bits=16, after_data=LIST_INFO), 16000, id="LIST-after-data"
    ),
]


@pytest.mark.parametrize(("source", "rate"), FORMATS)
def test_a_wav_comes_out_as_the_same_tone_at_the_rate_asked(
    server: Server, source: dict[str, Any], rate: int
) -> None:
    seconds = 0.8
    options = dict(source)
    in_rate, channels = options.pop("rate"), options.pop("channels")
    url = server.serve("/tone.wav", wav(tone(seconds, in_rate, channels), in_rate, **options))
    pieces = collect(url, rate, chunk_ms=40)
    piece = rate * 40 // 1000
    assert all(p.size == piece for p in pieces[:-1])
    assert 0 < pieces[-1].size <= piece
    assert_tone(np.concatenate(pieces), rate, seconds)


def test_at_the_same_rate_16_bit_mono_passes_through_sample_for_sample(server: Server) -> None:
    frames = tone(0.3, 24000)
    url = server.serve("/same.wav", wav(frames, 24000))
    out = np.concatenate(collect(url, 24000))
    assert np.array_equal(out, np.round(frames[:, 0] * 32767).astype(np.int16))


def test_channels_are_mixed_as_their_mean(server: Server) -> None:
    frames = tone(0.5, 16000, channels=2)
    frames[:, 1] = 0.0  # the tone on the left only: half as loud in mono
    url = server.serve("/left.wav", wav(frames, 16000))
    assert_tone(np.concatenate(collect(url, 16000)), 16000, 0.5, level=0.25)


def test_the_decoder_gives_the_same_samples_whatever_pieces_the_bytes_come_in() -> None:
    data = wav(tone(0.2, 44100, channels=2), 44100, bits=24, before_data=LIST_INFO)
    whole = WavDecoder(44100)  # no resampling: soxr's last bit depends on its input's pieces
    expected = np.concatenate([whole.feed(data), whole.finish()])
    assert expected.size == 8820
    rng = random.Random(7)
    for sizes in ([1], [2, 3, 5, 7], [6], [rng.randint(1, 700) for _ in range(50)]):
        decoder = WavDecoder(44100)
        got: list[Samples] = []
        pos = 0
        while pos < len(data):
            size = sizes[len(got) % len(sizes)]
            got.append(decoder.feed(data[pos : pos + size]))
            pos += size
        got.append(decoder.finish())
        assert np.array_equal(np.concatenate(got), expected), sizes


def test_the_first_samples_come_before_the_server_has_sent_the_last_byte(server: Server) -> None:
    data = wav(tone(2.0, 16000), 16000, data_size=0xFFFFFFFF)
    first, rest = data[:16001], data[16001:]  # half a second, cut mid-frame

    def slow(h: Handler) -> None:
        h.start_chunked()
        h.send_chunk(first)
        server.released.wait(5)
        for at in range(0, len(rest), 1001):  # odd pieces: frames split between them
            h.send_chunk(rest[at : at + 1001])
        h.end_chunked()
        server.sent_all.set()

    server.routes["/slow.wav"] = slow

    async def listen() -> tuple[bool, list[Samples]]:
        pieces: list[Samples] = []
        before_last_byte = False
        async for piece in stream_media(
            server.url("/slow.wav"), 16000, max_bytes=BIG, timeout_s=10
        ):
            if not pieces:
                before_last_byte = not server.sent_all.is_set()
                server.released.set()
            pieces.append(piece)
        return before_last_byte, pieces

    started = time.monotonic()
    before_last_byte, pieces = asyncio.run(asyncio.wait_for(listen(), 20))
    assert before_last_byte
    assert time.monotonic() - started < 4  # the server never waited out its 5 s
    assert_tone(np.concatenate(pieces), 16000, 2.0)


def test_the_timeout_counts_only_the_wait_for_the_server(server: Server) -> None:
    """A consumer that plays each piece in real time does not use up the download's time."""
    url = server.serve("/paced.wav", wav(tone(1.0, 16000), 16000))

    async def play() -> int:
        frames = 0
        async for piece in stream_media(url, 16000, max_bytes=BIG, timeout_s=0.5, chunk_ms=100):
            frames += piece.size
            await asyncio.sleep(0.1)
        return frames

    started = time.monotonic()
    assert asyncio.run(play()) == 16000
    assert time.monotonic() - started > 0.9


def test_closing_the_generator_early_closes_the_download(server: Server) -> None:
    data = wav(tone(0.5, 16000), 16000, data_size=0xFFFFFFFF)
    hung_up = threading.Event()

    def endless(h: Handler) -> None:
        h.start_chunked()
        try:
            h.send_chunk(data[:44])
            while not server.closing.is_set():
                h.send_chunk(data[44:])
                time.sleep(0.01)
        except OSError:
            hung_up.set()

    server.routes["/endless.wav"] = endless

    async def two_pieces() -> int:
        stream = stream_media(server.url("/endless.wav"), 16000, max_bytes=BIG, timeout_s=5)
        count = 0
        async with contextlib.aclosing(stream) as pieces:
            async for _ in pieces:
                count += 1
                if count == 2:
                    break
        return count

    assert asyncio.run(two_pieces()) == 2
    assert hung_up.wait(3)


# --- limits --------------------------------------------------------------------------------------


def test_a_content_length_over_the_limit_is_refused_before_any_audio(server: Server) -> None:
    url = server.serve("/big.wav", wav(tone(2.0, 16000), 16000))  # 64 kB of audio
    message, got = failure(url + "?authSig=secret", max_bytes=50_000)
    assert "too large" in message
    assert "64044 bytes" in message
    assert "50000" in message
    assert got == []
    assert SECRET not in message


def test_a_chunked_body_over_the_limit_stops_at_the_limit(server: Server) -> None:
    data = wav(tone(2.0, 16000), 16000, data_size=0xFFFFFFFF)

    def chunked(h: Handler) -> None:
        h.start_chunked()
        for at in range(0, len(data), 4000):
            h.send_chunk(data[at : at + 4000])
        h.end_chunked()

    server.routes["/big.wav"] = chunked
    message, got = failure(server.url("/big.wav"), max_bytes=50_000)
    assert "too large" in message
    assert "50000 bytes" in message
    heard = sum(piece.size for piece in got)
    assert 0 < heard <= 25_000


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://host/a.wav?authSig=secret", "unsupported URL scheme 'ftp'"),
        ("/api/tts_proxy/a.wav?authSig=secret", "unsupported URL scheme 'none'"),
        ("http:///a.wav?authSig=secret", "no host"),
    ],
)
def test_only_http_and_https_urls_are_fetched(url: str, says: str) -> None:
    message, _ = failure(url)
    assert says in message
    assert SECRET not in message


def test_an_http_error_names_the_status_and_the_place(server: Server) -> None:
    message, _ = failure(server.url("/missing.wav?authSig=secret"))
    assert message == f"HTTP 404 from {server.url('')}"


ID3 = b"ID3\x04\0\0\0\0\0\x21" + bytes(200)
NOT_WAV = [
    pytest.param(ID3, "audio/mpeg", "MP3, Content-Type audio/mpeg", id="mp3-id3"),
    pytest.param(b"\xff\xfb\x90\x64" + bytes(400), "audio/mpeg", "MP3", id="mp3-frame"),
    pytest.param(b"\xff\xf1\x50\x80" + bytes(400), "audio/aac", "AAC", id="aac"),
    pytest.param(b"fLaC\0\0\0\x22" + bytes(100), "audio/flac", "FLAC", id="flac"),
    pytest.param(b"OggS\0\x02" + bytes(100), "audio/ogg", "Ogg", id="ogg"),
    pytest.param(b"\0\0\0\x20ftypM4A " + bytes(100), "audio/mp4", "MP4", id="m4a"),
    pytest.param(
        b"RIFF\x24\0\0\0AVI LIST" + bytes(100), "video/avi", "RIFF but not WAVE", id="avi"
    ),
    pytest.param(
        b"\n<!DOCTYPE html><html><body>Login</body></html>",
        "text/html; charset=utf-8",
        "HTML page, Content-Type text/html",
        id="html",
    ),
    pytest.param(b'{"message": "authSig=secret"}', "application/json", "JSON", id="json"),
    pytest.param(b"Unauthorized: authSig=secret", "text/plain", "text", id="text"),
    pytest.param(b"\x1f\x8b\x08\x00" + bytes(20), "", "1f 8b 08 00", id="unknown"),
]


@pytest.mark.parametrize(("body", "content_type", "says"), NOT_WAV)
def test_what_is_not_wav_is_refused_naming_what_it_looks_like(
    server: Server, body: bytes, content_type: str, says: str
) -> None:
    url = server.serve("/media", body, content_type)
    message, got = failure(url + "?authSig=secret")
    assert message.startswith(f"unsupported audio: {server.url('')} is not WAV (it")
    assert says in message
    assert message.endswith("Home Assistant converts to WAV for Herald)")
    assert SECRET not in message
    assert got == []


def test_an_empty_body_is_refused(server: Server) -> None:
    message, _ = failure(server.serve("/empty.wav", b""))
    assert message == f"unsupported audio: the response from {server.url('')} is empty"


@pytest.mark.parametrize("cut", [3, 20, 40], ids=["in-RIFF", "in-fmt", "in-data-header"])
def test_a_truncated_header_is_refused(server: Server, cut: int) -> None:
    data = wav(tone(0.1, 16000), 16000)[:cut]
    message, got = failure(server.serve("/cut.wav", data))
    assert "broken WAV: the header of" in message
    assert f"after {cut} bytes" in message
    assert got == []


@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        (struct.pack("<HHIIHH", 0x0055, 1, 16000, 2000, 1, 0), "format 0x0055"),  # MP3 in WAV
        (struct.pack("<HHIIHH", 1, 9, 16000, 288000, 18, 16), "9 channels"),
        (struct.pack("<HHIIHH", 1, 1, 16000, 64000, 4, 16), "frame is 4 bytes, not 2"),
        (struct.pack("<HHIIHH", 3, 1, 16000, 32000, 2, 16), "16-bit float"),
        (struct.pack("<HHIIHH", 1, 1, 100, 200, 2, 16), "rate of 100 Hz"),
        (struct.pack("<HH", 1, 1), "fmt chunk of"),
    ],
)
def test_a_format_herald_cannot_play_is_refused(server: Server, fmt: bytes, says: str) -> None:
    data = b"RIFF\0\0\0\0WAVE" + chunk(b"fmt ", fmt) + b"data" + struct.pack("<I", 4) + bytes(4)
    message, _ = failure(server.serve("/odd.wav", data))
    assert says in message


def test_data_before_fmt_is_refused(server: Server) -> None:
    message, _ = failure(server.serve("/odd.wav", b"RIFF\0\0\0\0WAVEdata\4\0\0\0\0\0\0\0"))
    assert "comes before its format" in message


# --- redirects, failures, timeouts ---------------------------------------------------------------


def test_a_redirect_is_followed(server: Server) -> None:
    server.serve("/real.wav", wav(tone(0.5, 16000), 16000))
    server.routes["/moved.wav"] = lambda h: h.redirect("/real.wav?authSig=secret", 307)
    server.routes["/hop"] = lambda h: h.redirect(server.url("/moved.wav"))
    assert_tone(np.concatenate(collect(server.url("/hop?authSig=secret"), 16000)), 16000, 0.5)
    assert server.requests == ["/hop?authSig=secret", "/moved.wav", "/real.wav?authSig=secret"]


def test_errors_after_a_redirect_name_the_place_that_answered(server: Server) -> None:
    server.routes["/hop"] = lambda h: h.redirect("/gone.wav?authSig=secret")
    message, _ = failure(server.url("/hop"))
    assert message == f"HTTP 404 from {server.url('')}"


def test_more_than_five_redirects_are_refused(server: Server) -> None:
    def hop_to(path: str) -> Route:
        return lambda h: h.redirect(f"{path}?authSig=secret")

    for hop in range(7):
        server.routes[f"/r{hop}"] = hop_to(f"/r{hop + 1}")
    server.serve("/r7", wav(tone(0.1, 16000), 16000))
    assert len(collect(server.url("/r2"), 16000)) > 0  # five hops: fine
    message, _ = failure(server.url("/r0?authSig=secret"))
    assert "too many redirects (more than 5)" in message
    assert SECRET not in message


def test_a_redirect_to_another_scheme_is_refused(server: Server) -> None:
    server.routes["/hop"] = lambda h: h.redirect("file:///etc/passwd")
    message, _ = failure(server.url("/hop"))
    assert "unsupported scheme" in message
    assert server.requests == ["/hop"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_connection_failure_names_the_host_and_the_error() -> None:
    port = closed_port()
    message, _ = failure(f"http://user:secret@127.0.0.1:{port}/a.wav?authSig=secret")
    assert message.startswith(f"cannot connect to http://127.0.0.1:{port}: ConnectError")
    assert "/a.wav" not in message  # Home Assistant's proxy puts a token in the path
    assert SECRET not in message


@pytest.mark.parametrize("when", ["before-headers", "mid-body"])
def test_a_server_that_stalls_times_out(server: Server, when: str) -> None:
    data = wav(tone(1.0, 16000), 16000, data_size=0xFFFFFFFF)

    def stall(h: Handler) -> None:
        if when == "mid-body":
            h.start_chunked()
            h.send_chunk(data[:8000])
        server.closing.wait(10)

    server.routes["/stall.wav"] = stall
    started = time.monotonic()
    message, got = failure(server.url("/stall.wav?authSig=secret"), timeout_s=0.3)
    assert time.monotonic() - started < 2
    assert message == (f"timed out: the media from {server.url('')} did not arrive within 0.3 s")
    assert (sum(p.size for p in got) > 0) == (when == "mid-body")


def test_a_body_cut_off_mid_way_is_an_error_after_the_audio_so_far(server: Server) -> None:
    data = wav(tone(1.0, 16000), 16000)

    def cut(h: Handler) -> None:
        h.reply(200, data[:10_000], length=len(data))
        h.close_connection = True

    server.routes["/cut.wav"] = cut
    message, got = failure(server.url("/cut.wav?authSig=secret"))
    assert message.startswith(f"the download from {server.url('')} broke off:")
    assert SECRET not in message
    assert sum(p.size for p in got) > 0


# --- HTTPS ---------------------------------------------------------------------------------------


def self_signed(directory: Path) -> ssl.SSLContext:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    with running(self_signed(tmp_path)) as tls_server:
        tls_server.serve("/tone.wav", wav(tone(0.1, 16000), 16000))
        message, _ = failure(tls_server.url("/tone.wav?authSig=secret"))
    assert message.startswith(f"cannot connect to {tls_server.url('')}: ConnectError")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert SECRET not in message


# --- logs ----------------------------------------------------------------------------------------


def test_no_log_line_shows_the_query(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = server.serve("/tone.wav", wav(tone(0.2, 16000), 16000))
    collect(url + "?authSig=secret", 16000)
    failure(server.url("/missing.wav?authSig=secret"))
    assert any(record.name == "herald.media" for record in caplog.records)
    assert all(SECRET not in record.getMessage() for record in caplog.records)
