"""The line-stop output: tell the line to stop while the PLC cannot be told what the parts are.

While the PLC is unreachable the runner keeps deciding, but its decisions reach nobody: parts pass
uninspected as far as the line knows. With ``--line-stop URL`` (``edge.cameras[].line_stop``), once
the decision sink has been disconnected for ``plc.line_stop_after_seconds`` (10 s), a second output —
a device that can stop the conveyor, or the topic a line controller listens to — is told to stop;
once the PLC is back it is told to run again:

* ``modbus://host[:502][?unit=N]``: holding register ``plc.line_stop_register`` (HR0) = 1 stop, 0 run;
* ``mqtt://host[:1883]/topic``: a retained JSON message ``{"stop": true|false, "line", "camera",
  "reason", "at"}`` (QoS 1), so a controller that connects later reads the current state.

:class:`LineStopGuard` watches :meth:`Sink.state` from its own thread and keeps retrying the output
until it holds the wanted state (the output may be unreachable too; it is logged, never raised).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from keeneye.domain import ConfigError
from keeneye.settings import PlcSettings
from keeneye.sinks.target import parse_sink_url
from keeneye.sinks.types import SinkState

log = logging.getLogger(__name__)

LINE_STOP_SETTING = "--line-stop"
POLL_SECONDS = 0.2


class LineStopOutput(Protocol):
    """Sets the line-stop signal; blocking, called from the guard's thread only; raises when the
    device cannot be reached (the guard retries)."""

    url: str

    def set(self, stop: bool, reason: str) -> None: ...

    def close(self) -> None: ...


class _ModbusLineStop:
    def __init__(self, url: str, plc: PlcSettings, *, line: str, camera: str) -> None:
        from keeneye.sinks.modbus import ModbusTransport  # the `plc` extra, only when this URL is used

        target = parse_sink_url(url, setting=LINE_STOP_SETTING)
        self.url = target.url
        self._register = plc.line_stop_register
        self._transport = ModbusTransport(target, plc.modbus, timeout=plc.connect_timeout_seconds)
        self._connected = False

    def set(self, stop: bool, reason: str) -> None:
        if not self._connected:
            self._transport.connect()
            self._connected = True
        try:
            self._transport.write_registers(self._register, [1 if stop else 0])
        except Exception:
            self.close()  # reconnect on the next try
            raise

    def close(self) -> None:
        self._connected = False
        self._transport.disconnect()


class _MqttLineStop:
    def __init__(self, url: str, plc: PlcSettings, *, line: str, camera: str) -> None:
        from keeneye.sinks.mqtt import MqttTransport  # the `plc` extra, only when this URL is used

        target = parse_sink_url(url, setting=LINE_STOP_SETTING)
        self.url = target.url
        self._line, self._camera = line, camera
        self._transport = MqttTransport(
            target, plc.mqtt, line=f"{line}-stop", camera=camera, timeout=plc.connect_timeout_seconds
        )
        self._topic = target.topic
        self._connected = False

    def set(self, stop: bool, reason: str) -> None:
        if not self._connected:
            self._transport.connect()
            self._connected = True
        payload = {
            "stop": stop,
            "line": self._line,
            "camera": self._camera,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
        }
        try:
            self._transport.publish(self._topic, json.dumps(payload), qos=1, retain=True)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        self._connected = False
        self._transport.disconnect()


def open_line_stop(url: str, plc: PlcSettings, *, line: str, camera: str) -> LineStopOutput:
    """The output ``url`` names (checked now: a bad URL is a :class:`ConfigError` naming --line-stop)."""
    kind = parse_sink_url(url, setting=LINE_STOP_SETTING).kind
    if kind == "modbus":
        return _ModbusLineStop(url, plc, line=line, camera=camera)
    if kind == "mqtt":
        return _MqttLineStop(url, plc, line=line, camera=camera)
    raise ConfigError(
        LINE_STOP_SETTING,
        f"a line-stop output over {kind} is not supported",
        fix="use modbus://HOST[:PORT][?unit=N] (a holding register) or mqtt://HOST[:PORT]/TOPIC",
    )


class LineStopGuard:
    """Raises the line-stop output after the sink has been disconnected for ``after_seconds``, lowers
    it once the sink is connected again. :meth:`poll` is the whole rule (tests drive it with their
    own clock); :meth:`start` runs it every :data:`POLL_SECONDS` in a daemon thread."""

    def __init__(
        self,
        state: Callable[[], SinkState],
        output: LineStopOutput,
        *,
        after_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._state = state
        self.output = output
        self.after_seconds = after_seconds
        self._clock = clock
        self._on_change = on_change
        self._down_since: float | None = None
        self._want = False  # the state the output should have
        self._written: bool | None = None  # the state it was last set to (None: never)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        """Whether the line is (meant to be) stopped now."""
        return self._want

    def poll(self) -> None:
        now = self._clock()
        state = self._state()
        if state.connected:
            self._down_since = None
            want, reason = False, "plc_connected"
        else:
            if self._down_since is None:
                self._down_since = now
            down = now - self._down_since
            want, reason = self._want or down >= self.after_seconds, "plc_unreachable"
        if want != self._want:
            self._want = want
            log.warning(
                "line-stop output %s: %s",
                self.output.url,
                "STOP (the PLC has been unreachable for %.0f s)" % (now - (self._down_since or now))
                if want
                else "run (the PLC is back)",
            )
            if self._on_change is not None:
                self._on_change(want)
        # Written once per change — and again until a write succeeds; a successful initial "run"
        # clears a stop left by a previous run that ended while stopped.
        if self._written is not want:
            try:
                self.output.set(want, reason)
                self._written = want
            except Exception as exc:
                log.warning("line-stop output %s unreachable: %s", self.output.url, exc)

    def start(self) -> LineStopGuard:
        self._thread = threading.Thread(target=self._run, name="keeneye-line-stop", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.poll()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.output.close()


__all__ = ["LINE_STOP_SETTING", "LineStopGuard", "LineStopOutput", "open_line_stop"]
