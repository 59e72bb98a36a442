"""Rhasspy's Hermes protocol, so Herald can stand in for a Rhasspy TTS service.

`hermes/tts/say` (`text`, `id`, `siteId`, `volume`, `lang`) for this site becomes an ordinary
announcement; when it is over, `hermes/tts/sayFinished` goes out with the same `id` and `siteId`.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from herald.announcement import new_id
from herald.events import Event
from herald.logsafe import shown
from herald.payload_json import load_json

log = logging.getLogger(__name__)

SAY = "hermes/tts/say"
SAY_FINISHED = "hermes/tts/sayFinished"
_ENDINGS = frozenset({"finished", "failed", "expired", "dropped", "rejected"})
MAX_WAITING = 1000  # says awaiting their sayFinished; far more than a queue holds


class HermesBridge:
    def __init__(self, site_id: str, publish: Callable[[str, str], None]) -> None:
        """`publish` sends a sayFinished (topic, payload)."""
        self.site_id = site_id
        self._publish = publish
        # Announcement id -> the siteId to answer; the oldest forgotten beyond MAX_WAITING (an
        # id that no event ever names, e.g. one too long to be an id, must not stay forever).
        self._waiting: OrderedDict[str, str] = OrderedDict()

    def translate(self, payload: bytes) -> bytes | None:
        """The Herald payload for a Hermes `say`; None when it is meant for another site.

        A payload that is not a JSON object is passed on as it is, so that it is rejected with
        the usual reason.
        """
        try:
            data: dict[str, Any] = load_json(payload)  # type: ignore[assignment]
            site = str(data.get("siteId") or "default")
        except (ValueError, AttributeError):
            return payload
        if site != self.site_id:
            log.debug("hermes: a say for site %s, not this one", shown(site))
            return None
        ident = str(data.get("id") or new_id())
        if data.get("lang"):
            log.debug("hermes: lang %s is left to the configured voice", shown(str(data["lang"])))
        translated: dict[str, Any] = {"text": data.get("text", ""), "id": ident}
        if isinstance(volume := data.get("volume"), int | float):
            translated["volume"] = max(0.0, min(float(volume), 1.0))
        self._waiting[ident] = site
        while len(self._waiting) > MAX_WAITING:
            self._waiting.popitem(last=False)
        return json.dumps(translated).encode()

    def note(self, event: Event) -> None:
        """Every event of Herald's: one that ends a Hermes announcement sends its sayFinished."""
        if (finished := self.finished(event)) is not None:
            self._publish(*finished)

    def finished(self, event: Event) -> tuple[str, str] | None:
        """The sayFinished message due for this event, if it ends a Hermes announcement."""
        ident = event.announcement_id
        if event.kind not in _ENDINGS or ident is None or ident not in self._waiting:
            return None
        if event.kind == "preempted" and event.details.get("requeued"):
            return None
        site = self._waiting.pop(ident)
        return SAY_FINISHED, json.dumps({"id": event.announcement_id, "siteId": site})
