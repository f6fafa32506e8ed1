"""Assembling a runner from what ``keeneye inspect`` is given: spec, model, source, PLC, journal, DB.

The model is the pipeline's registered champion, or a bundle folder (``--model DIR``) for a line that
runs without a registry. Everything that can be refused is checked here, before the first frame: the
``--plc`` URL, the source, line / camera names, the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keeneye.domain import ConfigError, InvalidInput, ModelRef
from keeneye.edge.frames import FrameSource, open_source
from keeneye.edge.journal import Journal, check_name
from keeneye.edge.recorder import EventRecorder, RecorderLabels, StoredHook
from keeneye.edge.runner import EdgeRunner, InferenceModel, LineContext
from keeneye.metrics import Metrics
from keeneye.models import ModelBundle, OnnxModel
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.sinks import LINE_STOP_SETTING, LineStopGuard, open_line_stop, open_sink, parse_sink_url
from keeneye.store import open_object_store, open_results_db


@dataclass(frozen=True)
class InspectOptions:
    """The ``keeneye inspect`` command line."""

    pipeline: str
    source: str
    line: str
    camera: str
    plc: str
    sku: str = ""
    batch: str = ""
    fps: float | None = None
    model: Path | None = None
    replay: bool | None = None
    watch: bool = False
    line_stop: str = ""  # --line-stop: told to stop the line while the PLC is unreachable


def edge_root(settings: Settings) -> Path:
    return settings.edge.journal_dir or Path(settings.home) / "edge"


def load_model(
    settings: Settings, spec: PipelineSpec, bundle_dir: Path | None
) -> tuple[InferenceModel, ModelRef]:
    """The bundle at ``bundle_dir``, else the champion from the registry; warmed up."""
    if bundle_dir is not None:
        try:
            bundle = ModelBundle.load(bundle_dir)
        except (OSError, ValueError, InvalidInput) as exc:
            raise ConfigError(
                "--model", f"{bundle_dir} is not a model bundle: {exc}", fix="give a bundle folder"
            ) from exc
        ref = ModelRef(bundle.manifest.name or spec.model_name, "local", "local")
    else:
        registry = ModelRegistry(settings)
        info = registry.resolve(spec.model_name, spec.model.alias)
        if info is None:
            raise ConfigError(
                "--pipeline",
                f"{spec.name} has no model with alias {spec.model.alias!r}",
                fix=f"train one (keeneye train --pipeline {spec.name}) or pass --model BUNDLE_DIR",
            )
        ref = ModelRef(spec.model_name, str(info.version), spec.model.alias)
        bundle = registry.download(ref.name, ref.version)
    model = OnnxModel(bundle, settings.inference)
    model.warmup()
    return model, ref


def build_runner(
    settings: Settings,
    options: InspectOptions,
    *,
    metrics: Metrics | None = None,
    model: InferenceModel | None = None,
    ref: ModelRef | None = None,
    source: FrameSource | None = None,
    on_stored: StoredHook | None = None,
) -> EdgeRunner:
    """A ready runner (not started). ``model`` / ``source`` replace the loaded ones (tests, embedding);
    ``on_stored`` receives each stored group's bus messages (the CLI publishes them)."""
    try:
        check_name(options.line, "line")
        check_name(options.camera, "camera")
    except ValueError as exc:
        raise ConfigError("--line/--camera", str(exc), fix="e.g. --line L1 --camera cam-1") from exc
    spec = PipelineCatalog(settings).get(options.pipeline)
    if spec.decision.kind != "ok-defect":
        raise ConfigError(
            "--pipeline", f"{spec.name} makes no OK/DEFECT decision", fix="use --pipeline line-inspection"
        )
    parse_sink_url(options.plc, setting="--plc")  # refuse a bad URL before anything is created
    if options.line_stop:
        parse_sink_url(options.line_stop, setting=LINE_STOP_SETTING)
    metrics = metrics or Metrics()
    journal = Journal(edge_root(settings), options.line, options.camera)
    sink = open_sink(
        options.plc,
        line=options.line,
        camera=options.camera,
        plc=settings.plc,
        pipeline=spec.name,
        on_outcome=journal.record_outcome,
        metrics=metrics,
        replay=options.replay,
    )
    try:
        if model is None:
            model, ref = load_model(settings, spec, options.model)
        # A watched folder (a camera dropping files; a runner under `keeneye up`) resumes after the last
        # part journaled, so a restart never sends the PLC results for parts that have long passed.
        resume = journal.last_frame() if options.watch else None
        source = source or open_source(
            options.source, fps=options.fps, watch=options.watch, start_after=resume
        )
        recorder = EventRecorder(
            journal,
            open_results_db(settings),
            open_object_store(settings),
            RecorderLabels(spec.name, options.line, options.camera),
            settings.edge,
            metrics,
            on_stored=on_stored,
            link=sink.state,
        )
        line_stop = (
            LineStopGuard(
                sink.state,
                open_line_stop(options.line_stop, settings.plc, line=options.line, camera=options.camera),
                after_seconds=settings.plc.line_stop_after_seconds,
                on_change=lambda stopped: metrics.edge_line_stop.labels(
                    spec.name, options.line, options.camera
                ).set(1 if stopped else 0),
            )
            if options.line_stop
            else None
        )
    except BaseException:
        sink.close(timeout=1.0)
        journal.close()
        raise
    return EdgeRunner(
        spec=spec,
        model=model,
        ref=ref or ModelRef(spec.model_name, "local", "local"),
        source=source,
        sink=sink,
        journal=journal,
        recorder=recorder,
        settings=settings,
        context=LineContext(options.line, options.camera, options.sku, options.batch),
        metrics=metrics,
        line_stop=line_stop,
    )
