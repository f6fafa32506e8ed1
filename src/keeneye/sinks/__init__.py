"""Sinks: where line decisions go — a PLC over Modbus TCP or OPC UA, or an MQTT broker.

``open_sink(url, line=…, camera=…)`` returns a running :class:`Sink`; ``send()`` never blocks; each
decision's outcome (acked / failed with a reason) comes back through ``on_outcome``. Reconnects use
exponential backoff with jitter; decisions made while the PLC is down fail (``plc_unreachable``) and
are not replayed unless ``replay`` is on. See docs/line-inspection.md for the wiring.
"""

from keeneye.sinks.dispatcher import ThreadedSink, Transport, backoff_delay
from keeneye.sinks.factory import open_sink
from keeneye.sinks.line_stop import LINE_STOP_SETTING, LineStopGuard, LineStopOutput, open_line_stop
from keeneye.sinks.target import PLC_SETTING, SinkTarget, parse_sink_url
from keeneye.sinks.types import (
    FailReason,
    OutcomeCallback,
    PlcDecision,
    PlcNotAcknowledged,
    PlcRejected,
    ResultCode,
    Sink,
    SinkOutcome,
    SinkState,
    SinkStatus,
)

__all__ = [
    "LINE_STOP_SETTING",
    "PLC_SETTING",
    "FailReason",
    "LineStopGuard",
    "LineStopOutput",
    "OutcomeCallback",
    "PlcDecision",
    "PlcNotAcknowledged",
    "PlcRejected",
    "ResultCode",
    "Sink",
    "SinkOutcome",
    "SinkState",
    "SinkStatus",
    "SinkTarget",
    "ThreadedSink",
    "Transport",
    "backoff_delay",
    "open_line_stop",
    "open_sink",
    "parse_sink_url",
]
