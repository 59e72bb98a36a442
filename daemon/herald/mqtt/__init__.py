"""MQTT: the broker connection (paho's network thread bridged to asyncio) and the topic tree."""
