"""``--plc`` URLs: which protocol, which host and port, and the per-protocol extras.

``modbus://host[:502][?unit=N]``, ``opcua://host[:4840][/path]`` (also ``opc.tcp://…``) and
``mqtt://host[:1883]/topic/levels``. Every refusal is a :class:`~keeneye.domain.ConfigError` naming the
setting and saying how to write it instead, before any connection is tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from keeneye.domain import ConfigError
from keeneye.settings import mask_url, split_url

PLC_SETTING = "--plc"

SCHEMES = {
    "modbus": "Modbus TCP, holding registers",
    "opcua": "OPC UA, opc.tcp transport",
    "opc.tcp": "OPC UA, the protocol's own scheme",
    "mqtt": "MQTT broker, topic in the path",
}
DEFAULT_PORTS = {"modbus": 502, "opcua": 4840, "mqtt": 1883}
_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")  # names, IPv4, IPv6 without brackets


@dataclass(frozen=True)
class SinkTarget:
    """A parsed ``--plc`` URL. ``kind`` is ``modbus``, ``opcua`` or ``mqtt``; ``unit`` is the Modbus unit
    when the URL names one; ``topic`` the MQTT topic; ``path`` the OPC UA endpoint path."""

    kind: str
    host: str
    port: int
    url: str  # as given, password masked
    unit: int | None = None
    topic: str = ""
    path: str = ""

    @property
    def opcua_endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"


def parse_sink_url(url: str, *, setting: str = PLC_SETTING) -> SinkTarget:
    """Parse and check a sink URL; raises :class:`ConfigError` naming ``setting`` when it is malformed."""
    scheme, parts = split_url(setting, url.strip(), SCHEMES)
    kind = "opcua" if scheme == "opc.tcp" else scheme
    shown = mask_url(url)
    host = parts.hostname or ""
    if not host or not _HOST.match(host):
        raise ConfigError(setting, f"{shown!r} names no host", fix=f"write {kind}://HOST:PORT…")
    port = parts.port if parts.port is not None else DEFAULT_PORTS[kind]
    if port == 0:
        raise ConfigError(setting, f"port 0 in {shown!r} is not a port", fix="give the PLC's port, 1-65535")
    if parts.fragment:
        raise ConfigError(setting, f"{shown!r} has a #fragment", fix="remove the part after #")
    query = _query(setting, shown, parts.query)
    if kind == "modbus":
        return _modbus(setting, shown, host, port, parts.path, query)
    unknown = sorted(query)
    if unknown:
        raise ConfigError(setting, f"{shown!r}: unknown parameter(s) {unknown}", fix="remove them")
    if kind == "mqtt":
        return SinkTarget(kind, host, port, shown, topic=_topic(setting, shown, parts.path))
    return SinkTarget(kind, host, port, shown, path=parts.path.rstrip("/") if parts.path != "/" else "")


def _query(setting: str, shown: str, query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(setting, f"{shown!r}: malformed query ({exc})", fix="write ?name=value") from exc
    repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
    if repeated:
        raise ConfigError(setting, f"{shown!r} repeats {repeated}", fix="give each parameter once")
    return {k: v[0] for k, v in parsed.items()}


def _modbus(setting: str, shown: str, host: str, port: int, path: str, query: dict[str, str]) -> SinkTarget:
    if path not in ("", "/"):
        raise ConfigError(
            setting, f"{shown!r}: Modbus TCP has no path ({path!r})", fix="write modbus://HOST:PORT"
        )
    unknown = sorted(set(query) - {"unit"})
    if unknown:
        raise ConfigError(setting, f"{shown!r}: unknown parameter(s) {unknown}", fix="only ?unit=N is known")
    unit: int | None = None
    if "unit" in query:
        text = query["unit"]
        if not text.isdigit() or not 0 <= int(text) <= 255:
            raise ConfigError(
                setting, f"{shown!r}: unit {text!r} is not a number 0-255", fix="write ?unit=1 (the usual)"
            )
        unit = int(text)
    return SinkTarget("modbus", host, port, shown, unit=unit)


def _topic(setting: str, shown: str, path: str) -> str:
    topic = unquote(path.removeprefix("/"))
    if not topic:
        raise ConfigError(
            setting, f"{shown!r} names no topic", fix="write mqtt://HOST:PORT/plant/line1/decisions"
        )
    if any(c in topic for c in "+#\x00"):
        raise ConfigError(
            setting, f"topic {topic!r} has a wildcard or NUL", fix="publish to a plain topic (no + or #)"
        )
    if topic.endswith("/") or "//" in topic:
        raise ConfigError(setting, f"topic {topic!r} has an empty level", fix="remove the doubled or last /")
    if len(topic.encode()) > 65535:
        raise ConfigError(setting, "the topic is longer than MQTT allows (65535 bytes)", fix="shorten it")
    return topic
