"""smartcut: relevant segments of very long videos (seed 004, docs/smartcut.md).

In process: probe (:mod:`.probe`), sampling at a sensitivity (:mod:`.sampling`), the seed's chunks
(:mod:`.chunks`), recommenders (:mod:`.recommender`, built-ins :mod:`.motion`, :mod:`.scene`,
:mod:`.objects`), the shared segment post-processing (:mod:`.segments`), lossless cuts
(:mod:`.cut`), synthetic videos with ground truth (:mod:`.synth`) and TPR/FPR evaluation
(:mod:`.evaluate`). As services: the seed's bus protocol (:mod:`.protocol`), plugin processes
(:mod:`.plugins`) and the backend (:mod:`.backend`), which take the bus structurally so that
``video`` stays beside ``stream`` in the layers.
"""

from keeneye.video import motion as _motion  # noqa: F401  (registers the built-in "motion")
from keeneye.video import objects as _objects  # noqa: F401  (registers the built-in "objects")
from keeneye.video import scene as _scene  # noqa: F401  (registers the built-in "scene")
from keeneye.video.chunks import (
    CHUNK_FRAMES,
    ChunkFrame,
    frame_name,
    read_chunk,
    read_folder,
    video_folder,
    write_chunks,
)
from keeneye.video.errors import VideoLimits, VideoRejected
from keeneye.video.evaluate import Evaluation, evaluate
from keeneye.video.local import SmartcutRequest, SmartcutRun, run_local
from keeneye.video.messages import ProcessedFiles, RequestOptions, StartedPlugin, processed_files
from keeneye.video.motion import MotionRecommender
from keeneye.video.objects import HogPeopleDetector, ObjectsRecommender, OnnxDetector, load_detector
from keeneye.video.probe import VideoInfo, probe
from keeneye.video.recommender import (
    FrameScorer,
    Recommendation,
    Recommender,
    make_recommender,
    recommenders,
    register,
)
from keeneye.video.sampling import SampledFrame, sample_frames, scaled_size, uses_keyframes
from keeneye.video.scene import SceneRecommender
from keeneye.video.segments import Segment, SegmentPolicy, parse_segments, to_segments
from keeneye.video.synth import GroundTruth, SynthSpec, generate_video

__all__ = [
    "CHUNK_FRAMES",
    "ChunkFrame",
    "Evaluation",
    "FrameScorer",
    "GroundTruth",
    "HogPeopleDetector",
    "MotionRecommender",
    "ObjectsRecommender",
    "OnnxDetector",
    "ProcessedFiles",
    "Recommendation",
    "Recommender",
    "RequestOptions",
    "SampledFrame",
    "SceneRecommender",
    "Segment",
    "SegmentPolicy",
    "SmartcutRequest",
    "SmartcutRun",
    "StartedPlugin",
    "SynthSpec",
    "VideoInfo",
    "VideoLimits",
    "VideoRejected",
    "evaluate",
    "frame_name",
    "generate_video",
    "load_detector",
    "make_recommender",
    "parse_segments",
    "probe",
    "processed_files",
    "read_chunk",
    "read_folder",
    "recommenders",
    "register",
    "run_local",
    "sample_frames",
    "scaled_size",
    "to_segments",
    "uses_keyframes",
    "video_folder",
    "write_chunks",
]
