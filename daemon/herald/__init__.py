"""Herald: spoken announcements from Home Assistant (MQTT) on Raspberry Pi speakers (ALSA)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("herald")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
