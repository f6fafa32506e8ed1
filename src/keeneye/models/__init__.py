"""Model bundles, ONNX Runtime sessions, output post-processing and micro-batching.

The serving path: ``OnnxModel.load(bundle)`` → ``MicroBatcher(model.run)`` → ``postprocess(manifest,
outputs, mapper)`` → ``decide_ok_defect``. Tiny ONNX builders for tests live in
``keeneye.models.testing`` (imported explicitly, not re-exported here).
"""

from keeneye.imaging import InputSpec
from keeneye.models.batcher import BatcherClosed, BatchHook, MicroBatcher, QueueFull, RunFn, run_batch
from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    TASK_OF_FORMAT,
    ClassInfo,
    ModelManifest,
    OutputFormat,
    Thresholds,
)
from keeneye.models.postprocess import (
    CoordinateMapper,
    batched_nms,
    classify_logits,
    decide_ok_defect,
    defect_class_ids,
    map_to_original,
    nms,
    ok_class_names,
    postprocess,
    seg_logits_to_instances,
    sigmoid,
    softmax,
    yolo_detect,
    yolo_segment,
)
from keeneye.models.session import OnnxModel, default_providers, session_options

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "TASK_OF_FORMAT",
    "BatchHook",
    "BatcherClosed",
    "ClassInfo",
    "CoordinateMapper",
    "InputSpec",
    "MicroBatcher",
    "ModelBundle",
    "ModelManifest",
    "OnnxModel",
    "OutputFormat",
    "QueueFull",
    "RunFn",
    "Thresholds",
    "batched_nms",
    "classify_logits",
    "decide_ok_defect",
    "default_providers",
    "defect_class_ids",
    "map_to_original",
    "nms",
    "ok_class_names",
    "postprocess",
    "run_batch",
    "seg_logits_to_instances",
    "session_options",
    "sigmoid",
    "softmax",
    "yolo_detect",
    "yolo_segment",
]
