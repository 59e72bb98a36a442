"""Herald: spoken announcements from Home Assistant (MQTT) on Raspberry Pi speakers (ALSA)."""
