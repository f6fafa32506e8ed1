"""Scaling: the local supervisor (``keeneye up``), the autoscaler (the HPA rule), load tests, and the
embedded deployment's backups (``keeneye backup``, :mod:`keeneye.scaling.backup`).

In the scaled deployment Kubernetes does this job (``deploy/kubernetes``: an HPA for the API, a
KEDA ScaledObject on Kafka lag for the workers); the rule and its bounds are the same.
"""

from keeneye.scaling.autoscaler import Autoscaler, ScalingDecision, ScalingPolicy, proposal, replica_bounds
from keeneye.scaling.backup import (
    BackupManifest,
    BackupProblem,
    BackupResult,
    RestoreResult,
    VerifyReport,
    create_backup,
    restore_backup,
    verify_backup,
)
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
    "BackupManifest",
    "BackupProblem",
    "BackupResult",
    "Child",
    "ChildSpec",
    "Heartbeat",
    "RestartBackoff",
    "RestoreResult",
    "ScalingDecision",
    "ScalingPolicy",
    "Supervisor",
    "SystemStatus",
    "SystemView",
    "VerifyReport",
    "create_backup",
    "heartbeat_dir",
    "proposal",
    "read_heartbeats",
    "read_status",
    "replica_bounds",
    "restore_backup",
    "verify_backup",
    "view_path",
    "write_view",
]
