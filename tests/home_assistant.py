"""A real Home Assistant for the tests: the `homeassistant` package in the Debian 13 root.

Home Assistant runs as its own process (Python 3.13, in the root `tests/debian13/env.sh`
makes), with its config directory in the test's temporary directory. The tests speak to it as a
user's browser does: onboarding makes the owner and gives a token, the MQTT integration is
added through its own config flow, and every action is a service call over the REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from herald.mqtt.discovery import discovery_slug
from tests.support import REPO, Broker, free_port, wait_for

ENV_SCRIPT = REPO / "tests" / "debian13" / "env.sh"
HA_VERSION = (REPO / "tests" / "debian13" / "home-assistant.version").read_text().strip()
HASS = "/opt/homeassistant/bin/hass"
CONFIG_INSIDE = "/mnt"  # where env.sh mounts the config directory inside the root
IN_THE_ROOT = os.environ.get("HERALD_DEBIAN13") == "/"  # the tests run inside it themselves
START_TIMEOUT_S = 90  # a first start writes its storage; a Pi-sized machine is slower still

CONFIGURATION = """\
homeassistant:
  name: Herald tests
  latitude: 51.5
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: GB
  currency: GBP
  language: en
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""


class HomeAssistantError(AssertionError):
    pass


class HomeAssistant:
    """One Home Assistant process; `start()` again after `stop()` is a restart."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))

    def configure(
        self, homeassistant: dict[str, str] | None = None, logs: dict[str, str] | None = None
    ) -> None:
        """More of configuration.yaml, before start(): keys under `homeassistant:` (such as
        `internal_url`) and logger levels by logger name."""
        path = self.config_dir / "configuration.yaml"
        text = path.read_text()
        for section, more in (("homeassistant:\n", homeassistant), ("  logs:\n", logs)):
            indent = " " * (section.index(section.strip()) + 2)
            lines = "".join(f"{indent}{key}: {value}\n" for key, value in (more or {}).items())
            text = text.replace(section, section + lines, 1)
        path.write_text(text)

    # --- the process --------------------------------------------------------------------------

    def start(self) -> None:
        env = {**os.environ, "HERALD_DEBIAN13_BIND": str(self.config_dir)}
        config = str(self.config_dir) if IN_THE_ROOT else CONFIG_INSIDE
        with (self.config_dir / "hass.out").open("ab") as output:  # the process has its own copy
            self._process = subprocess.Popen(
                [str(ENV_SCRIPT), "run", HASS, "-c", config, "--skip-pip"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._serving, START_TIMEOUT_S, f"Home Assistant {HA_VERSION} to serve")
        if self.token is None:
            self._onboard()
        wait_for(self._running, START_TIMEOUT_S, "Home Assistant to finish starting")

    def _serving(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise HomeAssistantError(
                f"Home Assistant exited with {self._process.returncode}:\n{self.output()[-3000:]}"
            )
        try:
            return self._request("GET", "/api/onboarding", auth=False)[0] == 200
        except OSError:
            return False

    def _running(self) -> bool:
        status, config = self._request("GET", "/api/config")
        return status == 200 and config.get("state") == "RUNNING"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None

    def output(self) -> str:
        path = self.config_dir / "hass.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def log(self) -> str:
        """Home Assistant's own log file (this run and the ones before it)."""
        path = self.config_dir / "home-assistant.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- what a user does ---------------------------------------------------------------------

    def _onboard(self) -> None:
        """Create the owner, as the first screen of a new Home Assistant asks, and log in."""
        client_id = f"{self.url}/"
        status, user = self._request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "Herald tests",
                "username": "herald",
                "password": "herald-tests-only",
                "language": "en",
            },
            auth=False,
        )
        if status != 200:
            raise HomeAssistantError(f"onboarding refused: {status} {user}")
        form = {"grant_type": "authorization_code", "code": user["auth_code"]}
        status, tokens = self._request(
            "POST", "/auth/token", {**form, "client_id": client_id}, auth=False, as_form=True
        )
        if status != 200:
            raise HomeAssistantError(f"no token: {status} {tokens}")
        self.token = tokens["access_token"]

    def add_mqtt(self, broker: Broker) -> None:
        """Settings > Devices & services > Add integration > MQTT, with the broker's address."""
        flow = self._ok("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        if flow.get("type") == "menu":  # some releases ask first which way to set it up
            flow = self._ok(
                "POST",
                f"/api/config/config_entries/flow/{flow['flow_id']}",
                {"next_step_id": "broker"},
            )
        result = self._ok(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": broker.host, "port": broker.port},
        )
        if result.get("type") != "create_entry" or result["result"]["state"] != "loaded":
            raise HomeAssistantError(
                f"the MQTT config flow did not end in a loaded entry: {result}"
            )

    def add_esphome(self, host: str, port: int, key: str | None = None) -> dict[str, Any]:
        """Settings > Devices & services > Add integration > ESPHome, with the device's address
        (and its encryption key when the flow asks for it); the loaded config entry."""
        flow = self._ok("POST", "/api/config/config_entries/flow", {"handler": "esphome"})
        result = self._ok(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"host": host, "port": port},
        )
        if result.get("type") == "form" and result.get("step_id") == "encryption_key":
            if key is None:
                self._ok("DELETE", f"/api/config/config_entries/flow/{result['flow_id']}")
                raise HomeAssistantError(f"the ESPHome config flow asks for a key: {result}")
            result = self._ok(
                "POST",
                f"/api/config/config_entries/flow/{result['flow_id']}",
                {"noise_psk": key},
            )
        if result.get("type") != "create_entry" or result["result"]["state"] != "loaded":
            raise HomeAssistantError(
                f"the ESPHome config flow did not end in a loaded entry: {result}"
            )
        entry: dict[str, Any] = result["result"]
        return entry

    def remove_entry(self, entry_id: str) -> None:
        """Settings > Devices & services > the integration's entry > Delete."""
        self._ok("DELETE", f"/api/config/config_entries/entry/{entry_id}")

    def states(self) -> list[dict[str, Any]]:
        """Every entity's state object."""
        found: list[dict[str, Any]] = self._ok("GET", "/api/states")
        return found

    def call(self, domain: str, service: str, **data: Any) -> None:
        """A service call, as an automation or a dashboard button makes it."""
        self._ok("POST", f"/api/services/{domain}/{service}", data)

    def state(self, entity_id: str) -> dict[str, Any] | None:
        """The entity's state object; None while Home Assistant does not know the entity."""
        status, body = self._request("GET", f"/api/states/{entity_id}")
        if status == 404:
            return None
        if status != 200:
            raise HomeAssistantError(f"GET state of {entity_id}: {status} {body}")
        result: dict[str, Any] = body
        return result

    def wait_state(
        self, entity_id: str, wanted: str, timeout: float = 20, **attributes: Any
    ) -> dict[str, Any]:
        """Wait until the entity shows `wanted` (and these attribute values); its state object."""
        seen: list[str] = []

        def shows() -> bool:
            found = self.state(entity_id)
            if found is None:
                return False
            if not seen or seen[-1] != found["state"]:
                seen.append(found["state"])
            matches = all(found["attributes"].get(k) == v for k, v in attributes.items())
            return found["state"] == wanted and matches

        try:
            wait_for(shows, timeout, f"{entity_id} to be {wanted!r} {attributes or ''}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it showed {seen}; now: {self.state(entity_id)}") from None
        found = self.state(entity_id)
        assert found is not None
        return found

    # --- HTTP ---------------------------------------------------------------------------------

    def _ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = self._request(method, path, body)
        if status != 200:
            raise HomeAssistantError(f"{method} {path}: {status} {answer}")
        return answer

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        auth: bool = True,
        as_form: bool = False,
    ) -> tuple[int, Any]:
        headers = {}
        data = None
        if body is not None:
            if as_form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        if auth and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        # S310: the URL is always this Home Assistant's own http:// address on loopback.
        request = urllib.request.Request(self.url + path, data, headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def entity_ids(node_id: str) -> dict[str, str]:
    """The entity ids Herald's discovery asks for (`default_entity_id`), by entity key."""
    prefix = f"herald_{discovery_slug(node_id)}"
    return {
        "announce": f"notify.{prefix}_announce",
        "alert": f"siren.{prefix}_alert",
        "stop": f"button.{prefix}_stop",
        "volume": f"number.{prefix}_volume",
        "quiet": f"switch.{prefix}_quiet_mode",
        "state": f"sensor.{prefix}_state",
        "queue_length": f"sensor.{prefix}_queue_length",
        "last": f"sensor.{prefix}_last_announcement",
        "voice": f"sensor.{prefix}_voice",
    }
