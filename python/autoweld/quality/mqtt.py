"""MQTT result channel (paho-mqtt): the same result as OPC UA, as plain JSON, QoS 1.

``mqtt://HOST:PORT/TOPIC[?client_id=ID&simulated=1]`` through
:func:`~autoweld.quality.plc.open_plc`:

* the decision, on the deadline path: ``TOPIC/decision`` with
  ``{"Decision": "PASS"|"FAIL", "Counter": N, "Time": ISO-8601}``;
* the full result, after the record is in the ledger: ``TOPIC`` with the OPC 40100 fields of
  :func:`~autoweld.quality.plant.result_fields` (times as ISO-8601 UTC, unknown values null).

Delivered means the broker acknowledged the message (PUBACK) before the deadline. paho runs its
network loop on its own thread and reconnects by itself; while it is not connected a message is
not delivered at once (nothing is queued for later). A message whose PUBACK came too late may
still reach subscribers: every message carries its counter or ResultId and seq to tell.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import datetime, timezone
from typing import Any

from autoweld.quality.plant import ResultLink, query_flag, refuse_unknown

__all__ = ["MqttLink", "open_mqtt", "result_json"]

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
#: the longest wait between reconnection attempts to a broker that went away
RECONNECT_MAX_DELAY_S = 5


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def result_json(fields: dict[str, Any]) -> str:
    """The MQTT payload of one result (:func:`~autoweld.quality.plant.result_fields`)."""
    return json.dumps(_jsonable(fields), sort_keys=True, allow_nan=False)


class MqttLink(ResultLink):
    """``mqtt://``: decision and result published with QoS 1 (see the module docstring)."""

    def __init__(
        self,
        url: str,
        host: str,
        port: int,
        timeout: float,
        *,
        topic: str,
        client_id: str,
        simulated: bool,
    ) -> None:
        super().__init__(url, host, port, timeout, simulated)
        from paho.mqtt.client import CallbackAPIVersion, Client  # lazily: only MQTT stations

        self.topic = topic
        # a fresh random start, so a restarted station never repeats the counter a reader saw
        self.counter = random.randint(1, 2**31 - 1)
        self._client = Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_DELAY_S)
        self._client.connect_async(host, port, keepalive=KEEPALIVE_S)
        self._client.loop_start()

    def _send(self, decision: str, deadline: float) -> None:
        self.counter = self.counter % (2**31 - 1) + 1
        now = _jsonable(datetime.now(timezone.utc))
        payload = {"Decision": decision, "Counter": self.counter, "Time": now}
        self._publish_message(
            f"{self.topic}/decision", json.dumps(payload, sort_keys=True), deadline
        )

    def _publish(self, fields: dict[str, Any], deadline: float) -> None:
        self._publish_message(self.topic, result_json(fields), deadline)

    def _publish_message(self, topic: str, payload: str, deadline: float) -> None:
        if not self._client.is_connected():
            raise ConnectionError("not connected to the broker")
        message = self._client.publish(topic, payload, qos=1)
        left = deadline - time.monotonic()
        if left > 0:
            message.wait_for_publish(left)
        if not message.is_published():
            raise TimeoutError("no PUBACK from the broker before the deadline")

    def _drop(self) -> None:
        """Nothing to drop: paho keeps (re)connecting on its own thread."""

    def close(self) -> None:
        super().close()
        self._client.disconnect()
        self._client.loop_stop()


def open_mqtt(
    url: str, scheme: str, host: str, port: int, path: str, query: dict[str, list[str]],
    timeout: float,
) -> MqttLink:  # fmt: skip
    """The link for an ``mqtt://`` URL (``open_plc`` has split it)."""
    topic = path.strip("/")
    if not topic or any(c in topic for c in "+\0") or "#" in url:  # "#": urlsplit's fragment
        raise ValueError(
            f"plc url {url!r} needs a topic without wildcards: mqtt://host:port/plant/station"
        )
    client_id = query.pop("client_id", [f"autoweld-{random.getrandbits(32):08x}"])[-1]
    simulated = query_flag(url, query, "simulated")
    refuse_unknown(url, query)
    return MqttLink(url, host, port, timeout, topic=topic, client_id=client_id, simulated=simulated)
