"""``open_sink``: the sink a ``--plc`` URL names, already running in its own thread.

The protocol libraries (pymodbus, asyncua, paho-mqtt) are the optional ``plc`` extra, so each
protocol module is imported when its URL is opened, never when ``keeneye.sinks`` is imported.
"""

from __future__ import annotations

from keeneye.domain import ConfigError
from keeneye.metrics import Metrics
from keeneye.settings import PlcSettings
from keeneye.sinks.dispatcher import ThreadedSink, Transport
from keeneye.sinks.target import PLC_SETTING, SinkTarget, parse_sink_url
from keeneye.sinks.types import OutcomeCallback, Sink


def open_sink(
    url: str,
    *,
    line: str,
    camera: str,
    plc: PlcSettings | None = None,
    pipeline: str = "line-inspection",
    on_outcome: OutcomeCallback | None = None,
    metrics: Metrics | None = None,
    replay: bool | None = None,
    setting: str = PLC_SETTING,
) -> Sink:
    """Parse ``url`` (refusing a malformed one with a :class:`ConfigError` naming ``setting``) and start
    its sink. Returns at once: the connection is made, and remade, by the sink's thread; use
    ``wait_connected`` where a start-up check wants to know. ``replay`` overrides ``plc.replay``."""
    plc = plc or PlcSettings()
    target = parse_sink_url(url, setting=setting)
    transport = _transport(target, plc, line=line, camera=camera, setting=setting)
    return ThreadedSink(
        transport,
        url=target.url,
        plc=plc,
        line=line,
        camera=camera,
        pipeline=pipeline,
        on_outcome=on_outcome,
        metrics=metrics,
        replay=replay,
    )


def _transport(target: SinkTarget, plc: PlcSettings, *, line: str, camera: str, setting: str) -> Transport:
    timeout = plc.write_timeout_seconds
    try:
        if target.kind == "modbus":
            from keeneye.sinks.modbus import ModbusTransport

            return ModbusTransport(target, plc.modbus, timeout=max(timeout, plc.connect_timeout_seconds))
        if target.kind == "opcua":
            from keeneye.sinks.opcua import OpcUaTransport

            try:
                return OpcUaTransport(target, plc.opcua, line=line, camera=camera, timeout=timeout)
            except ValueError as exc:
                raise ConfigError("KEENEYE_PLC__OPCUA__NODES", str(exc), fix="use those names") from exc
        from keeneye.sinks.mqtt import MqttTransport

        return MqttTransport(target, plc.mqtt, line=line, camera=camera, timeout=timeout)
    except ImportError as exc:
        raise ConfigError(
            setting,
            f"the {target.kind} sink needs a library that is not installed ({exc.name})",
            fix="pip install 'keeneye[plc]'",
        ) from exc
