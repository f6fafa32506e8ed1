"""The line-inspection edge runner: frames → decision → PLC within the deadline, fail-safe, nothing lost.

``keeneye inspect`` builds one :class:`EdgeRunner` per camera (:func:`build_runner`): frames come from a
:class:`FrameSource` (folder, video file, RTSP/HTTP stream), each is decided in process by its deadline
or gets the fail-safe DEFECT, the decision is journaled (:class:`Journal`, survives kill -9) and handed
to the PLC sink, and the :class:`EventRecorder` stores events, images and sink outcomes in the results
DB asynchronously. See docs/line-inspection.md.
"""

from keeneye.edge.decision import LineThresholds, LineVerdict, decide_line
from keeneye.edge.frames import FolderSource, Frame, FrameSource, Pacer, SourceFrame, VideoSource, open_source
from keeneye.edge.journal import DecidedEvent, Journal, OutcomeNote, check_name
from keeneye.edge.launch import InspectOptions, build_runner, edge_root, load_model
from keeneye.edge.recorder import (
    EventMessage,
    EventRecorder,
    RecorderLabels,
    StoredHook,
    event_message,
    event_metadata,
)
from keeneye.edge.runner import (
    DEFAULT_DEADLINE_MS,
    EdgeRunner,
    FailsafeReason,
    InferenceModel,
    LineContext,
    RunSummary,
    SummaryJson,
)

__all__ = [
    "DEFAULT_DEADLINE_MS",
    "DecidedEvent",
    "EdgeRunner",
    "EventMessage",
    "EventRecorder",
    "FailsafeReason",
    "FolderSource",
    "Frame",
    "FrameSource",
    "InferenceModel",
    "InspectOptions",
    "Journal",
    "LineContext",
    "LineThresholds",
    "LineVerdict",
    "OutcomeNote",
    "Pacer",
    "RecorderLabels",
    "RunSummary",
    "SourceFrame",
    "StoredHook",
    "SummaryJson",
    "VideoSource",
    "build_runner",
    "check_name",
    "decide_line",
    "edge_root",
    "event_message",
    "event_metadata",
    "load_model",
    "open_source",
]
