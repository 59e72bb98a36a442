"""The `herald` command: run, say, check, devices, cache. Parses arguments; the work happens
elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from herald.announcement import (
    Announcement,
    PayloadRejected,
    new_id,
    parse_payload,
    parse_priority,
)
from herald.audio import AudioError, AudioSink
from herald.audio.alsa import AlsaOutput, playback_devices
from herald.audio.wav import WavFileOutput
from herald.config import Config, ConfigError, load_config
from herald.events import Event

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    try:
        return version("herald")
    except PackageNotFoundError:
        return "unknown"


def _priority(value: str) -> int:
    try:
        return parse_priority(int(value) if value.isdigit() else value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    common.add_argument("--version", action="version", version=f"herald {_version()}")
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $HERALD_CONFIG, "
        "else /etc/herald/herald.toml, else built-in defaults)",
    )

    parser = argparse.ArgumentParser(
        prog="herald",
        parents=[common],
        description="Spoken announcements from Home Assistant on this speaker.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", parents=[common, with_config], help="run the daemon")
    run.add_argument(
        "--remove-discovery",
        action="store_true",
        help="remove this speaker from Home Assistant (empty retained discovery messages) and exit",
    )

    say = commands.add_parser("say", parents=[common, with_config], help="speak a test message")
    say.add_argument("text", nargs="+", metavar="TEXT", help="what to say")
    say.add_argument(
        "--local",
        action="store_true",
        help="speak in this process, without the daemon or the broker",
    )
    say.add_argument(
        "--output",
        metavar="FILE.wav",
        type=Path,
        help="write a WAV file instead of playing (implies --local)",
    )
    say.add_argument(
        "--priority",
        type=_priority,
        default=50,
        metavar="P",
        help="low, normal, high, critical or 0-100 (default normal)",
    )
    say.add_argument(
        "--chime",
        metavar="NAME",
        help="soft, bell, alert, alarm, a WAV file in audio.chimes_dir (its name or absolute "
        "path), or none (default: the priority's chime)",
    )
    target = say.add_mutually_exclusive_group()
    target.add_argument("--node", metavar="NAME", help="speak on another node (its node_id)")
    target.add_argument("--all", action="store_true", help="speak on every Herald speaker")
    target.add_argument("--group", metavar="NAME", help="speak on the speakers of a group")
    say.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up waiting for the daemon after S seconds (default 120)",
    )

    commands.add_parser(
        "check", parents=[common, with_config], help="check config, broker, audio device and voices"
    )
    commands.add_parser("devices", parents=[common, with_config], help="list ALSA playback PCMs")
    cache = commands.add_parser(
        "cache", parents=[common, with_config], help="list or clear the phrase cache"
    )
    cache.add_argument(
        "action",
        choices=["list", "clear"],
        help="list: the kept phrases, most recently used first; clear: delete them all",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_by_default = args.command != "run"
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.WARNING
        if quiet_by_default
        else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handlers: dict[str, Callable[[argparse.Namespace, Config, Path | None], int]] = {
        "run": _run,
        "say": _say,
        "check": _check,
        "devices": _devices,
        "cache": _cache,
    }
    try:
        config, source = load_config(args.config)
        return handlers[args.command](args, config, source)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


def _run(args: argparse.Namespace, config: Config, _source: Path | None) -> int:
    from herald.app import run_daemon
    from herald.systemd import configure_logging

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.remove_discovery:
        from herald.app import remove_discovery

        return asyncio.run(remove_discovery(config))
    return asyncio.run(run_daemon(config, reload=lambda: load_config(args.config)[0]))


def _say(args: argparse.Namespace, config: Config, _source: Path | None) -> int:
    from herald.app import announcement_defaults

    payload: dict[str, object] = {
        "text": " ".join(args.text),
        "id": new_id(),
        "priority": args.priority,
    }
    if args.chime is not None:
        payload["chime"] = False if args.chime == "none" else args.chime
    try:
        announcement = parse_payload(
            json.dumps(payload).encode(), 1 << 20, time.time(), announcement_defaults(config)
        )
    except PayloadRejected as exc:
        print(f"herald say: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    target = _target(args)
    timeline = _Timeline(show_node=target is not None)
    if args.local or args.output:
        output: AudioSink = (
            WavFileOutput(args.output, config.audio) if args.output else AlsaOutput(config.audio)
        )
        final = asyncio.run(_say_locally(config, announcement, output, timeline.show_local))
        finals = {config.node_id: final}
    else:
        from herald.mqtt.remote import RemoteError, announce_via_daemon

        try:
            if args.node:
                config = config.model_copy(update={"node_id": args.node})
            finals = asyncio.run(
                announce_via_daemon(config, payload, args.timeout, timeline.show, target)
            )
        except RemoteError as exc:
            print(f"herald say: {exc}", file=sys.stderr)
            return EXIT_FAILED
    spoken = all(event.kind == "finished" for event in finals.values())
    if args.output and spoken:
        print(f"wrote {args.output}")
    return EXIT_OK if spoken else EXIT_FAILED


async def _say_locally(
    config: Config, announcement: Announcement, output: AudioSink, show: Callable[[Event], None]
) -> Event:
    from herald.app import build_delivery
    from herald.speaker import Speaker
    from herald.voice import build_voices, voices_running

    final: list[Event] = []

    def record(event: Event) -> None:
        show(event)
        final.append(event)

    voices = build_voices(config)
    # The daemon's loudness file is read, not written; no keep-awake tone for a single say, and
    # the amplifier is the daemon's to switch (this would switch it off under the daemon).
    delivery = replace(build_delivery(config, learn=False), keep_awake=None)
    record(Event("queued", announcement.id))
    try:
        async with voices_running(voices):
            await Speaker(voices, output, record, delivery).speak(announcement)
    finally:
        await output.close()
    return final[-1]


def _target(args: argparse.Namespace) -> str | None:
    """The say topic `--all` or `--group` names (None: the node's own)."""
    if args.all:
        return "{base}/all/say"
    if args.group:
        return "{base}/group/" + str(args.group) + "/say"
    return None


class _Timeline:
    """Prints each event with its time since the first one (and its node, for several)."""

    def __init__(self, show_node: bool = False) -> None:
        self._start: float | None = None
        self._show_node = show_node

    def show(self, node: str, event: Event) -> None:
        if self._start is None:
            self._start = event.ts
        details = "  ".join(f"{key}={value}" for key, value in event.details.items())
        where = f"{node:<12} " if self._show_node else ""
        line = f"+{event.ts - self._start:.3f}s  {where}{event.kind:<9} {details}"
        print(line.rstrip(), flush=True)

    def show_local(self, event: Event) -> None:
        self.show("", event)


def _check(_args: argparse.Namespace, config: Config, source: Path | None) -> int:
    from herald.checks import run_checks

    results = asyncio.run(run_checks(config, source))
    for result in results:
        print(result.line())
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


def _devices(_args: argparse.Namespace, config: Config, _source: Path | None) -> int:
    try:
        names = playback_devices()
    except (ImportError, AudioError) as exc:
        print(f"herald devices: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for name in names:
        marker = "*" if name == config.audio.device else " "
        print(f"{marker} {name}")
    print(f"(* = audio.device in the config; {len(names)} playback PCMs)")
    return EXIT_OK


def _cache(args: argparse.Namespace, config: Config, _source: Path | None) -> int:
    from herald.voice import open_cache

    cache = open_cache(config)
    try:
        if args.action == "clear":
            files, freed = cache.clear()
            print(f"deleted {files} files ({_size(freed)}) from {cache.directory}")
            return EXIT_OK
        entries = cache.entries()
        total = cache.total_bytes()
    except OSError as exc:
        print(f"herald cache: {cache.directory}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    for entry in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        print(
            f"{_size(entry.size):>9}  {entry.key.engine:<8}  {used}  {entry.seconds:5.1f} s  "
            f"{_preview(entry.key.text)}"
        )
    off = "" if config.voice.cache.enabled else " (voice.cache.enabled is false)"
    print(
        f"{len(entries)} phrases, {_size(total)} of {config.voice.cache.max_mb:g} MB "
        f"in {cache.directory}{off}"
    )
    return EXIT_OK


def _size(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB" if count >= 100_000 else f"{count / 1000:.0f} kB"


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
