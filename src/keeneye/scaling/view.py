"""The system view: what ``keeneye up`` is running, written to ``<home>/run/system.json``.

The supervisor rewrites it every control interval (atomically); ``GET /v1/system`` reads it. A view
that is missing, marked stopped, older than a few intervals, or written by a dead process means the
supervisor is not running.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

Role = Literal["api", "worker", "scheduler", "plugin", "inspect"]
ProcessState = Literal["running", "backoff", "stopping", "stopped"]


class ProcessView(BaseModel):
    name: str
    role: Role
    pipeline: str | None = None
    pid: int | None = Field(None, description="None while waiting to restart")
    state: ProcessState
    restarts: int = 0
    uptime_seconds: float | None = None
    last_exit_code: int | None = None
    healthy: bool | None = Field(None, description="API: /health answered; worker: heartbeat is fresh")
    utilization: float | None = Field(
        None, description="worker: busy fraction over the last 30 s, from its latest fresh heartbeat"
    )
    log: str = ""


class PipelineView(BaseModel):
    replicas: int = Field(description="worker processes (running or restarting)")
    desired: int
    min_replicas: int
    max_replicas: int
    lag: int | None = Field(None, description="unacked messages of keeneye.<pipeline>.in")
    utilization: float | None = Field(None, description="mean busy fraction of the workers")
    utilization_max: float | None = Field(None, description="busy fraction of the busiest worker")
    heartbeats: int = Field(0, description="workers with a fresh heartbeat")


class DecisionView(BaseModel):
    at: float = Field(description="seconds since the epoch")
    pipeline: str
    current: int
    desired: int
    recommendation: int
    direction: Literal["up", "down", "none"]
    utilization: float | None = None
    lag: int | None = None
    reason: str


class SystemView(BaseModel):
    state: Literal["running", "stopped"]
    supervisor_pid: int
    started_at: float
    updated_at: float
    interval_seconds: float
    api_url: str | None = None
    processes: list[ProcessView] = Field(default_factory=list)
    pipelines: dict[str, PipelineView] = Field(default_factory=dict)
    decisions: list[DecisionView] = Field(default_factory=list, description="latest scaling changes")
    notes: list[str] = Field(default_factory=list, description="e.g. parts not started, and why")


class SystemStatus(BaseModel):
    """What ``GET /v1/system`` answers."""

    running: bool
    detail: str
    fix: str | None = None
    system: SystemView | None = Field(None, description="the latest view (also the last one when stopped)")


def view_path(home: Path) -> Path:
    return home / "run" / "system.json"


def write_view(home: Path, view: SystemView) -> None:
    """Atomically replace the view file, so a reader never sees half of it."""
    path = view_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(view.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_status(home: Path, *, now: float | None = None, min_stale_seconds: float = 15.0) -> SystemStatus:
    """The supervisor's state as ``GET /v1/system`` reports it; never raises for a bad file."""
    fix = "start the whole system with `keeneye up`"
    path = view_path(home)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        view = SystemView.model_validate(data)
    except FileNotFoundError:
        return SystemStatus(running=False, detail="supervisor not running (no system view yet)", fix=fix)
    except (OSError, ValueError, ValidationError) as exc:
        return SystemStatus(
            running=False, detail=f"supervisor not running (unreadable system view: {exc!s:.200})", fix=fix
        )
    now = time.time() if now is None else now
    age = now - view.updated_at
    stale_after = max(3 * view.interval_seconds, min_stale_seconds)
    if view.state == "stopped":
        detail = "supervisor not running (stopped)"
    elif not pid_alive(view.supervisor_pid):
        detail = f"supervisor not running (process {view.supervisor_pid} is gone)"
    elif age > stale_after:
        detail = f"supervisor not running (system view is {age:.0f} s old)"
    else:
        return SystemStatus(running=True, detail=f"supervisor running, view {age:.1f} s old", system=view)
    return SystemStatus(running=False, detail=detail, fix=fix, system=view)


__all__ = [
    "DecisionView",
    "PipelineView",
    "ProcessState",
    "ProcessView",
    "Role",
    "SystemStatus",
    "SystemView",
    "pid_alive",
    "read_status",
    "view_path",
    "write_view",
]
