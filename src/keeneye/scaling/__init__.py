"""Scaling: the local supervisor (``keeneye up``), the autoscaler (the HPA rule) and load tests.

In the scaled deployment Kubernetes does this job (``deploy/kubernetes``: an HPA for the API, a
KEDA ScaledObject on Kafka lag for the workers); the rule and its bounds are the same.
"""

from keeneye.scaling.autoscaler import Autoscaler, ScalingDecision, ScalingPolicy, proposal, replica_bounds
from keeneye.scaling.supervisor import (
    Child,
    ChildSpec,
    Heartbeat,
    RestartBackoff,
    Supervisor,
    heartbeat_dir,
    read_heartbeats,
)
from keeneye.scaling.view import SystemStatus, SystemView, read_status, view_path, write_view

__all__ = [
    "Autoscaler",
    "Child",
    "ChildSpec",
    "Heartbeat",
    "RestartBackoff",
    "ScalingDecision",
    "ScalingPolicy",
    "Supervisor",
    "SystemStatus",
    "SystemView",
    "heartbeat_dir",
    "proposal",
    "read_heartbeats",
    "read_status",
    "replica_bounds",
    "view_path",
    "write_view",
]
