"""What can be changed while Herald runs (volume, quiet mode), remembered across restarts."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Controls:
    volume: float
    quiet: bool = False

    @classmethod
    def load(cls, path: Path, default_volume: float) -> Controls:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(float(data["volume"]), bool(data["quiet"]))
        except FileNotFoundError:
            return cls(default_volume)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("controls: ignoring %s: %s", path, exc)
            return cls(default_volume)

    def save(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = path.with_suffix(".tmp")
            fresh.write_text(json.dumps(asdict(self)), encoding="utf-8")
            fresh.replace(path)
        except OSError as exc:
            log.warning("controls: cannot save %s: %s", path, exc)


def parse_volume(payload: bytes) -> float:
    """A `volume/set` payload: a number 0.0-1.0 (a percentage 0-100 also works)."""
    value = float(payload.decode("utf-8").strip())
    if 1.0 < value <= 100.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"volume {value} is outside 0.0-1.0")
    return value


def parse_switch(payload: bytes) -> bool:
    """`ON`/`OFF` (also true/false, 1/0)."""
    word = payload.decode("utf-8").strip().lower()
    if word in ("on", "true", "1"):
        return True
    if word in ("off", "false", "0"):
        return False
    raise ValueError(f"expected ON or OFF, got {word!r}")
