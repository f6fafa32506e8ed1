"""The edge runners ``keeneye up`` supervises: one ``keeneye inspect`` child per configured camera.

``edge.cameras`` in ``keeneye.yaml`` lists them (line, camera, source, PLC, SKU …); each becomes a
:class:`~keeneye.scaling.supervisor.ChildSpec` with the role ``inspect``. The supervisor restarts a
runner that exits with the same backoff as the API (doubling up to ``scaling.restart_max_seconds``,
reset once it stayed up); the runner's journal makes a restart lose no decided part, and its sequence
continues where it stopped. A folder source is watched for new frames (no ``--once``), so a runner
only exits when it fails; a video file ends, and is then played again after the backoff.
"""

from __future__ import annotations

from keeneye.scaling.supervisor import ChildSpec
from keeneye.settings import EdgeCamera, Settings


def inspect_command(python: str, camera: EdgeCamera) -> tuple[str, ...]:
    """The ``keeneye inspect`` command line of one configured camera."""
    cmd = [python, "-m", "keeneye", "inspect", "--pipeline", camera.pipeline, "--source", camera.source]
    cmd += ["--line", camera.line, "--camera", camera.camera, "--plc", camera.plc]
    if camera.sku:
        cmd += ["--sku", camera.sku]
    if camera.batch:
        cmd += ["--batch", camera.batch]
    if camera.fps is not None:
        cmd += ["--fps", f"{camera.fps:g}"]
    if camera.model is not None:
        cmd += ["--model", str(camera.model)]
    if camera.replay is not None:
        cmd.append("--replay" if camera.replay else "--no-replay")
    if camera.line_stop:
        cmd += ["--line-stop", camera.line_stop]
    return tuple(cmd)


def camera_children(settings: Settings, python: str) -> tuple[list[ChildSpec], list[str]]:
    """One supervised ``inspect`` child per camera of ``edge.cameras``, and the system view's note."""
    children = [
        ChildSpec(
            name=f"inspect-{c.line}-{c.camera}",
            role="inspect",
            command=inspect_command(python, c),
            pipeline=c.pipeline,
        )
        for c in settings.edge.cameras
    ]
    if not children:
        return [], ["inspect: no camera configured (edge.cameras in keeneye.yaml)"]
    return children, []


__all__ = ["camera_children", "inspect_command"]
