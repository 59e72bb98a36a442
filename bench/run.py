"""Run Herald's benchmark and write RESULTS.md and results.png.

    .venv/bin/python -m bench.run                 # the full run (about 33 minutes)
    .venv/bin/python -m bench.run --smoke --out /tmp/bench   # every part, briefly (about 2 minutes)
    .venv/bin/python -m bench.run --parts overload --out /tmp/bench   # one part (here: 5)
    .venv/bin/python -m bench.run --parts sound --out /tmp/bench      # part 6 (about a minute)
    .venv/bin/python -m bench.run --parts ducking --out /tmp/bench    # part 7 (about 2 minutes)
    .venv/bin/python -m bench.run --parts rooms --out /tmp/bench      # part 8 (about 6 minutes)
    .venv/bin/python -m bench.run --parts esphome --out /tmp/bench    # part 9 (under a minute)

Every process it needs (mosquitto, the fake Deepgram server, PulseAudio, the daemon, the
cold-connect client, part 7's music players, part 8's four rooms) is started in a private
temporary directory and stopped at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    ducking,
    environment,
    esphome,
    footprint,
    overload,
    preempt,
    report,
    rooms,
    rotation,
    sound,
    ttfa,
)
from bench.common import Workspace, log
from bench.settings import PARTS, SMOKE, Settings
from tests.support import REPO

BENCH_DIR = Path(__file__).resolve().parent
ALL_PARTS = (*PARTS, overload.PART)  # part 5 keeps its options in bench/overload.py


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Measure Herald and write RESULTS.md and a plot."
    )
    parser.add_argument("--smoke", action="store_true", help="every part, briefly (CI)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where RESULTS.md goes")
    parser.add_argument("--first-byte-ms", type=float, help="the fake's first byte (100)")
    parser.add_argument("--round-trip-ms", type=float, help="one simulated round trip (40)")
    parser.add_argument("--count", type=int, help="announcements per variant in part 1 (200)")
    parser.add_argument("--warmup", type=int, help="uncounted announcements per variant (2)")
    parser.add_argument("--preempt-trials", type=int, help="preemptions in part 2 (50)")
    parser.add_argument("--rotation-s", type=float, help="length of part 3 in seconds (600)")
    parser.add_argument("--lifetime-s", type=float, help="the fake's socket lifetime (20)")
    parser.add_argument("--max-age-s", type=float, help="Herald's max_age_s in part 3 (15)")
    parser.add_argument("--footprint-count", type=int, help="announcements in part 4 (1000)")
    parser.add_argument("--idle-s", type=float, help="the idle window of part 4 (60)")
    parser.add_argument("--startups", type=int, help="starts timed to READY (5)")
    parser.add_argument(
        "--sound-announcements", type=int, help="announcements per voice in part 6 (5)"
    )
    parser.add_argument("--sound-cuts", type=int, help="preemption cuts in part 6 (8)")
    parser.add_argument("--sound-tails", type=int, help="tails per tail_ms setting in part 6 (5)")
    parser.add_argument(
        "--ducking-announcements", type=int, help="announcements per backend in part 7 (20)"
    )
    parser.add_argument(
        "--rooms-announcements",
        type=int,
        help="announcements per group in part 8 with sync, with the chime (50)",
    )
    parser.add_argument(
        "--rooms-baseline",
        type=int,
        help="the same without sync, and per phase without the chime, in part 8 (10)",
    )
    parser.add_argument("--esphome-announcements", type=int, help="announcements in part 9 (30)")
    parser.add_argument("--seed", type=int, help="random seed (1)")
    parser.add_argument(
        "--parts",
        default=",".join(ALL_PARTS),
        help=f"which parts, comma-separated ({','.join(ALL_PARTS)})",
    )
    overload.add_arguments(parser)
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and configs")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if unknown := set(parts) - set(ALL_PARTS):
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    names = {f.name for f in dataclasses.fields(Settings)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    values.update(out=args.out, parts=parts, command=_command(argv))
    values.update(keep_workdir=args.keep_workdir)
    return Settings(**values)


def _command(argv: Sequence[str]) -> str:
    python = Path(sys.executable)
    with_venv = REPO / ".venv" / "bin" / "python"
    shown = (
        ".venv/bin/python" if python == with_venv or python.parent == with_venv.parent else "python"
    )
    return shlex.join([shown, "-m", "bench.run", *argv])


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse(argv)
    overload_options = overload.options_from(argv, settings.smoke)
    # SIGTERM (and SIGINT, which a background job ignores) end the run through every `finally`,
    # so the processes it started are stopped too.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_on_signal)
    sys.setswitchinterval(0.0005)  # the ear's thread notes arrivals without waiting for the GIL
    rng = random.Random(settings.seed)  # noqa: S311 (random intervals, not cryptography)
    began = time.monotonic()
    results = report.Results(
        settings,
        environment.machine(),
        environment.versions(),
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    root = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    log(f"working in {root}")
    runners: dict[str, Callable[[Workspace, Settings, random.Random], Any]] = {
        "ttfa": ttfa.run,
        "preempt": preempt.run,
        "rotation": rotation.run,
        "footprint": footprint.run,
        "sound": sound.run,
        "ducking": ducking.run,
        "rooms": rooms.run,
        "esphome": esphome.run,
        "overload": functools.partial(overload.run, options=overload_options),
    }
    ws = Workspace.create(root)
    try:
        for part in settings.parts:
            log(f"part {part}")
            try:
                setattr(results, part, runners[part](ws, settings, rng))
            except Exception as exc:
                traceback.print_exc()
                results.failures[part] = f"the part failed: {type(exc).__name__}: {exc}"
    finally:
        ws.close()
        if settings.keep_workdir:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results.minutes = (time.monotonic() - began) / 60
    path = report.write(results, settings.out)
    plots = [report.PLOT, *([report.SOUND_PLOT] if results.sound is not None else [])]
    log(f"wrote {path} and {', '.join(str(settings.out / plot) for plot in plots)}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
