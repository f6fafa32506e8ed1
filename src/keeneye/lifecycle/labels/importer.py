"""Importing corrected labels: a COCO folder/file or a Label Studio JSON export back into feedback.

An import is all or nothing: every image is checked first (known observation of this pipeline, known
classes, sane geometry) and each problem names the file, the annotation and the fix; nothing is written
while any image has an error unless ``skip_invalid`` asks to store the valid ones. Each stored label
(``ResultsDB.add_feedback``) resolves the observation's review items; a label already stored from the
same source is not stored twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from keeneye.domain import BoolArray, Decision, InvalidInput, JsonObject, JsonValue, NotFound, Task
from keeneye.geometry import decode_rle, mask_to_polygons
from keeneye.lifecycle.labels.coco import OBSERVATION_FIELD
from keeneye.lifecycle.labels.export import ProgressFn
from keeneye.lifecycle.labels.label_studio import LS_DECISION, LS_IMAGE
from keeneye.lifecycle.labels.queue import is_number
from keeneye.monitoring.quality import ManifestLookup, feedback_target, parse_feedback
from keeneye.pipelines import PipelineCatalog
from keeneye.store import ResultsDB
from keeneye.training import Annotation, Dataset, DatasetImage, Problem, load_coco

_HASH_NAME = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ImportReport:
    source: Path
    n_images: int = 0
    written: int = 0  # feedback rows stored
    unchanged: int = 0  # the same label from the same source was stored before: not repeated
    not_labelled: list[str] = field(default_factory=list)  # Label Studio tasks nobody annotated
    skipped: list[str] = field(default_factory=list)  # files with errors left out (skip_invalid)
    problems: list[Problem] = field(default_factory=list)
    feedback_ids: list[int] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> JsonObject:
        return {
            "ok": self.ok,
            "source": str(self.source),
            "images": self.n_images,
            "written": self.written,
            "unchanged": self.unchanged,
            "not_labelled": list(self.not_labelled),
            "skipped": list(self.skipped),
            "errors": len(self.errors),
            "problems": [p.__dict__ for p in self.problems],
        }


@dataclass
class _Region:
    ref: str  # "annotation 7" / "region k3", for messages
    name: str | None  # None: no label or an unknown category id (reported)
    bbox: list[float] | None
    polygons: list[list[float]]


@dataclass
class _Candidate:
    """One labelled image from a COCO or Label Studio file, before it is checked."""

    file: str
    observation_ref: str | None  # keeneye_observation_id, when the file carries it
    classes: list[str] = field(default_factory=list)  # classification choices
    decision: str | None = None
    regions: list[_Region] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def import_labels(
    db: ResultsDB,
    pipeline: str,
    source_path: str | Path,
    *,
    catalog: PipelineCatalog,
    manifests: ManifestLookup,
    author: str | None,
    source: str = "import",
    skip_invalid: bool = False,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Store the labels of a corrected COCO folder/file or Label Studio JSON export as feedback.

    Images map to observations by ``keeneye_observation_id``, else by a file name that is the image's
    content hash. Each label is checked exactly as ``POST /v1/observations/{id}/feedback`` checks it
    (:func:`keeneye.monitoring.quality.parse_feedback`: the answering model's classes, geometry inside
    the image), every image before anything is written; with errors nothing is written unless
    ``skip_invalid`` (then the valid images are, and the others are listed in ``skipped``). A label
    already stored for the observation from the same ``source`` is not stored twice.
    ``manifests`` finds the answering model's manifest (``registry_manifests(registry)``).
    """
    catalog.get(pipeline)  # NotFound with the known names
    path = Path(source_path).expanduser()
    report = ImportReport(source=path)
    candidates = _read_candidates(path, report)
    report.n_images = len(candidates)
    labels = _check_candidates(db, pipeline, candidates, catalog, manifests, source, report)
    if not report.ok and not skip_invalid:
        return report
    bad = {p.file for p in report.errors}
    report.skipped = sorted(bad)
    todo = [(obs, label, file) for obs, label, file in labels if file not in bad]
    for done, (obs_id, label, file) in enumerate(todo, start=1):
        if _already_stored(db, obs_id, label, source):
            report.unchanged += 1
        else:
            try:
                report.feedback_ids.append(db.add_feedback(obs_id, label, source, author))
                report.written += 1
            except NotFound:  # deleted between the check and the write
                report.problems.append(
                    _problem("unknown_observation", file, f"observation {obs_id} was deleted meanwhile", "")
                )
                report.skipped.append(file)
        if progress is not None:
            progress(done, len(todo))
    return report


def _read_candidates(path: Path, report: ImportReport) -> list[_Candidate]:
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(
                "bad_labels", f"{path} is not valid JSON ({exc})", fix="export the labels again"
            ) from exc
        if isinstance(doc, list):
            return _label_studio_candidates(doc, path, report)
    return _coco_candidates(load_coco(path))


def _coco_candidates(ds: Dataset) -> list[_Candidate]:
    names = {c.id: c.name for c in ds.categories}
    out = []
    for im in ds.images:
        ref = im.metadata.get(OBSERVATION_FIELD)
        cand = _Candidate(im.file_name, str(ref) if ref else None)
        for a in im.annotations:
            name = names.get(a.category_id)
            if name is None:
                cand.problems.append(
                    _problem(
                        "unknown_category",
                        im.file_name,
                        f"annotation {a.id} has category id {a.category_id}, which is not in categories",
                        "add the category or relabel the annotation",
                    )
                )
                continue
            cand.classes.append(name)
            x1, y1, x2, y2 = a.box
            bbox = [x1, y1, x2 - x1, y2 - y1]
            cand.regions.append(_Region(f"annotation {a.id}", name, bbox, _coco_polygons(im, a, cand)))
        out.append(cand)
    return out


def _coco_polygons(im: DatasetImage, a: Annotation, cand: _Candidate) -> list[list[float]]:
    seg: Any = a.segmentation
    if not seg:
        return []
    if isinstance(seg, dict):  # RLE (CVAT masks): back to polygons, the shape feedback stores
        try:
            mask = _decode_rle(seg, im)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            cand.problems.append(
                _problem(
                    "bad_geometry", im.file_name, f"annotation {a.id}: unreadable RLE mask ({exc})", _REDRAW
                )
            )
            return []
        return mask_to_polygons(mask) if mask.any() else []
    if isinstance(seg, list):
        return list(seg)  # checked with the label
    cand.problems.append(
        _problem(
            "bad_geometry",
            im.file_name,
            f"annotation {a.id}: segmentation is neither polygons nor RLE",
            _REDRAW,
        )
    )
    return []


MAX_MASK_PIXELS = 64 * 1024 * 1024  # an RLE claiming a bigger canvas is refused before decoding


def _decode_rle(rle: Mapping[str, Any], im: DatasetImage) -> BoolArray:
    """Decode an RLE whose size matches the image (a forged size could allocate gigabytes)."""
    h, w = (int(v) for v in rle["size"])
    if im.width and im.height and (w, h) != (im.width, im.height):
        raise ValueError(f"its size {w}×{h} is not the image's {im.width}×{im.height}")
    if h <= 0 or w <= 0 or h * w > MAX_MASK_PIXELS:
        raise ValueError(f"its size {w}×{h} is not a plausible image size")
    return decode_rle(rle)


def _label_studio_candidates(tasks: list[Any], path: Path, report: ImportReport) -> list[_Candidate]:
    out = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InvalidInput(
                "bad_labels",
                f"{path}: task {index} is not a Label Studio task (no 'data' object)",
                fix="export the project as 'JSON' from Label Studio",
            )
        data = task["data"]
        image = str(data.get(LS_IMAGE, f"task {task.get('id', index)}"))
        file = PurePosixPath(image.split("?d=")[-1]).name or image
        ref = data.get(OBSERVATION_FIELD)
        annotation = _latest_annotation(task)
        if annotation is None:
            report.not_labelled.append(file)
            continue
        cand = _Candidate(file, str(ref) if ref else None)
        for n, item in enumerate(annotation.get("result") or [], start=1):
            _add_ls_result(cand, item, n)
        out.append(cand)
    return out


def _latest_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    done = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result") is not None
    ]
    return done[-1] if done else None


def _add_ls_result(cand: _Candidate, item: Any, n: int) -> None:
    if not isinstance(item, dict):
        return
    kind, control, value = item.get("type"), item.get("from_name"), item.get("value") or {}
    ref = f"region {item.get('id', n)}"
    if kind == "choices":
        chosen = [str(c) for c in value.get("choices") or []]
        if control == LS_DECISION:
            cand.decision = chosen[0] if chosen else None
        else:
            cand.classes += chosen
        return
    if kind not in ("polygonlabels", "rectanglelabels"):
        cand.problems.append(
            _problem(
                "unsupported_region",
                cand.file,
                f"{ref}: Label Studio {kind!r} regions are not supported",
                "use polygons, rectangles or choices (see label_config.xml)",
            )
        )
        return
    w, h = item.get("original_width"), item.get("original_height")
    if not (is_number(w) and is_number(h) and w > 0 and h > 0):
        cand.problems.append(
            _problem(
                "bad_geometry", cand.file, f"{ref}: no original_width/height", "export it from Label Studio"
            )
        )
        return
    labels = value.get(kind) or []
    name = str(labels[0]) if labels else None
    try:
        if kind == "polygonlabels":
            flat = [
                round(float(v) * s / 100, 2)
                for x, y in value.get("points") or []
                for v, s in ((x, w), (y, h))
            ]
            cand.regions.append(_Region(ref, name, None, [flat]))
        else:
            keys = (("x", w), ("y", h), ("width", w), ("height", h))
            bbox = [float(value[k]) * s / 100 for k, s in keys]
            if value.get("rotation"):
                raise ValueError("a rotated box cannot be stored; draw it unrotated")
            cand.regions.append(_Region(ref, name, bbox, []))
    except (KeyError, TypeError, ValueError) as exc:
        cand.problems.append(
            _problem("bad_geometry", cand.file, f"{ref}: unreadable {kind} ({exc})", _REDRAW)
        )


_REDRAW = "redraw the region in the labelling tool"
_INSTANCE_REF = re.compile(r"^instances\[(\d+)\]")


def _problem(code: str, file: str, message: str, fix: str | None) -> Problem:
    return Problem("error", code, file, message, fix or "")


def _check_candidates(
    db: ResultsDB,
    pipeline: str,
    candidates: Sequence[_Candidate],
    catalog: PipelineCatalog,
    manifests: ManifestLookup,
    source: str,
    report: ImportReport,
) -> list[tuple[str, JsonObject, str]]:
    """Map each candidate to its observation and validate its label; problems go into the report."""

    classify = catalog.get(pipeline).task is Task.classify
    mapped = _resolve_observations(db, pipeline, candidates)
    observations = db.get_observations(set(mapped.values()))
    labels: list[tuple[str, JsonObject, str]] = []
    claimed: dict[str, str] = {}
    for cand in candidates:
        obs_id = mapped.get(id(cand))
        problems = list(cand.problems)
        if obs_id is None or obs_id not in observations:
            problems.append(_unmapped(cand, pipeline))
        elif obs_id in claimed:
            problems.append(
                _problem(
                    "duplicate_observation",
                    cand.file,
                    f"observation {obs_id} is labelled by {claimed[obs_id]} as well",
                    "keep one of the two images",
                )
            )
        else:
            claimed[obs_id] = cand.file
        body = _feedback_body(cand, classify, problems)
        if not problems and obs_id is not None:
            try:
                target = feedback_target(db, catalog, observations[obs_id], manifests)
                parsed = parse_feedback(body, target, default_source=source)
                _check_decision(cand, parsed.label, problems)
            except InvalidInput as exc:
                if exc.status >= 500:  # the registry is down: no label can be checked
                    raise
                problems.append(_problem(exc.reason, cand.file, _region_message(cand, exc.message), exc.fix))
            else:
                if not problems:
                    labels.append((obs_id, parsed.label, cand.file))
        report.problems.extend(problems)
    return labels


def _feedback_body(cand: _Candidate, classify: bool, problems: list[Problem]) -> JsonObject:
    """The feedback API's body for one image: a class, a decision, or the regions as instances."""
    if classify:
        names = sorted(set(cand.classes))
        if len(names) > 1:
            problems.append(
                _problem(
                    "several_classes",
                    cand.file,
                    f"the image has {len(names)} classes ({', '.join(names)}); classification takes one",
                    "keep one class per image",
                )
            )
            return {}
        if names:
            return {"class": names[0]}
        if cand.decision is not None:
            return {"decision": cand.decision}
        problems.append(_problem("no_label", cand.file, "the image has no class", "choose its class"))
        return {}
    if not cand.regions and cand.decision == Decision.defect.value:
        return {"decision": cand.decision}  # DEFECT without drawing where
    instances: list[JsonValue] = []
    for r in cand.regions:
        item: JsonObject = {"class": r.name}
        if r.bbox is not None:
            item["bbox"] = [round(float(v), 2) for v in r.bbox]
        if r.polygons:
            item["segmentation"] = [list(p) for p in r.polygons]
        instances.append(item)
    return {"instances": instances}  # none drawn: nothing there (OK)


def _check_decision(cand: _Candidate, label: Mapping[str, Any], problems: list[Problem]) -> None:
    """A Label Studio decision that contradicts the drawn regions is a mistake, not a choice."""
    if cand.decision is None or "decision" not in label or label["decision"] == cand.decision:
        return
    problems.append(
        _problem(
            "conflicting_decision",
            cand.file,
            f"the decision says {cand.decision} but the drawn regions mean {label['decision']}",
            "remove the defect regions or choose DEFECT",
        )
    )


def _region_message(cand: _Candidate, message: str) -> str:
    """``instances[3]: …`` → ``annotation 12: …`` so the person finds the region in the file."""
    match = _INSTANCE_REF.match(message)
    if match is None or int(match.group(1)) >= len(cand.regions):
        return message
    return cand.regions[int(match.group(1))].ref + message[match.end() :]


def _unmapped(cand: _Candidate, pipeline: str) -> Problem:
    if cand.observation_ref:
        return _problem(
            "unknown_observation",
            cand.file,
            f"{OBSERVATION_FIELD} {cand.observation_ref!r} is not an observation of pipeline {pipeline!r}",
            "import into the pipeline it was exported from, or remove the image",
        )
    return _problem(
        "unknown_observation",
        cand.file,
        f"no {OBSERVATION_FIELD}, and the file name is not the content hash of an observation "
        f"of {pipeline!r}",
        f"keep the {OBSERVATION_FIELD} field or the file names `keeneye labels export` wrote",
    )


def _resolve_observations(db: ResultsDB, pipeline: str, candidates: Sequence[_Candidate]) -> dict[int, str]:
    """candidate (by ``id()``) → observation id, by the id the file carries or else by content hash."""
    refs = sorted({c.observation_ref for c in candidates if c.observation_ref})
    hashes = sorted({h for c in candidates if not c.observation_ref and (h := _hash_of(c.file)) is not None})
    known = db.observation_ids_of_pipeline(refs, pipeline)
    by_hash = db.newest_observation_by_hash(hashes, pipeline)
    out: dict[int, str] = {}
    for c in candidates:
        if c.observation_ref:
            if c.observation_ref in known:
                out[id(c)] = c.observation_ref
        elif (h := _hash_of(c.file)) is not None and h in by_hash:
            out[id(c)] = by_hash[h]
    return out


def _hash_of(file: str) -> str | None:
    stem = PurePosixPath(file).stem.lower()
    return stem if _HASH_NAME.match(stem) else None


def _already_stored(db: ResultsDB, observation_id: str, label: Mapping[str, Any], source: str) -> bool:
    return any(f.source == source and f.label == label for f in db.feedback_for(observation_id))
