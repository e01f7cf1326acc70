"""MQTT and Home Assistant: a front like `loop.http`, over a broker instead of a socket.

Only `loop.service` imports it, and only when `mqtt.enabled` is true, so a LOOP without MQTT
never loads it (nor paho-mqtt).
"""
