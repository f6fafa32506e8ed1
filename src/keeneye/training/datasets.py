"""Datasets on disk: COCO (the source of truth) and ImageFolder, validation, and a content version.

* :func:`load_coco` / :func:`load_imagefolder` build a :class:`Dataset` — images with absolute paths,
  sizes, per-image metadata and annotations (category id, ``xyxy`` box, masks decoded lazily).
* :func:`validate` checks it and returns a :class:`ValidationReport` of problems, each naming the
  file, a severity and the fix; ``Dataset.without(report.invalid_files)`` implements ``--skip-invalid``.
* :func:`dataset_version` is the sha256 of a canonical manifest (relative file names, content hashes,
  labels), so the same data has the same version wherever the folder lives.

COCO masks are polygons or RLE (compressed string or uncompressed list counts), decoded by
:mod:`keeneye.geometry` (numpy, bit-compatible with ``pycocotools.mask``, so loading needs no extra
package; polygons rasterised with ``pycocotools`` when installed, otherwise with OpenCV).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import BoolArray, Instances, InvalidInput
from keeneye.geometry import Rle, decode_rle, encode_rle, mask_to_polygons, polygons_to_mask
from keeneye.training.splits import SplitItem

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
ANNOTATIONS_FILE = "annotations.json"
DATASET_INFO_FILE = "dataset.json"

Severity = Literal["error", "warning"]
Segmentation = list[list[float]] | Rle | dict[str, Any] | None


def segmentation_to_mask(segmentation: Segmentation, height: int, width: int) -> BoolArray:
    """Any COCO segmentation (polygons, RLE or nothing) as an (h, w) bool mask."""
    if segmentation is None or segmentation == []:
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, dict):
        return decode_rle(segmentation)
    return polygons_to_mask(segmentation, height, width)


def mask_to_segmentation(mask: npt.NDArray[Any], min_iou: float = 0.95) -> Segmentation:
    """Polygons when they represent the mask faithfully, otherwise compressed RLE.

    Thin structures (scratches, cracks) and masks with holes lose most of their pixels as polygons,
    so we check the round trip and fall back to RLE below ``min_iou``.
    """
    m = mask.astype(bool)
    polys = mask_to_polygons(m)
    if polys:
        back = polygons_to_mask(polys, m.shape[0], m.shape[1])
        inter = np.logical_and(back, m).sum()
        union = np.logical_or(back, m).sum()
        if union and inter / union >= min_iou:
            return polys
    return encode_rle(m)


def mask_box_xywh(mask: npt.NDArray[Any]) -> list[float]:
    """COCO bbox ``[x, y, w, h]`` of a mask's pixels (pixel-edge coordinates)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


# --------------------------------------------------------------------------------------------------
# The dataset model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. a human "label", "novel": true


@dataclass(frozen=True)
class Annotation:
    """One instance: category id, ``xyxy`` box in pixels, and its segmentation (decoded on demand)."""

    id: int
    category_id: int
    box: tuple[float, float, float, float]
    area: float = 0.0
    iscrowd: int = 0
    segmentation: Segmentation = None

    def mask(self, height: int, width: int) -> BoolArray:
        """The instance mask; the filled box when the annotation has no segmentation."""
        if self.segmentation:
            return segmentation_to_mask(self.segmentation, height, width)
        m = np.zeros((height, width), dtype=bool)
        x1, y1, x2, y2 = (round(v) for v in self.box)
        m[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
        return m


@dataclass
class DatasetImage:
    id: int
    file_name: str  # relative to the dataset root, posix separators
    path: Path  # absolute
    width: int
    height: int
    metadata: dict[str, Any] = field(default_factory=dict)
    annotations: list[Annotation] = field(default_factory=list)
    _sha256: str | None = field(default=None, repr=False, compare=False)

    def sha256(self) -> str:
        """Hash of the file's bytes (cached; the file is read once)."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return self._sha256

    @property
    def category_ids(self) -> list[int]:
        return [a.category_id for a in self.annotations]

    def masks(self) -> BoolArray:
        """(N, H, W) masks of every annotation, decoded now."""
        if not self.annotations:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([a.mask(self.height, self.width) for a in self.annotations])

    def instances(self, with_masks: bool = True) -> Instances:
        """Ground truth as :class:`~keeneye.domain.Instances` (scores 1, class ids = category ids)."""
        n = len(self.annotations)
        return Instances(
            boxes=np.asarray([a.box for a in self.annotations], dtype=np.float32).reshape(n, 4),
            scores=np.ones(n, dtype=np.float32),
            class_ids=np.asarray(self.category_ids, dtype=np.int64).reshape(n),
            masks=self.masks() if with_masks else None,
        )


@dataclass
class Dataset:
    """Images + categories, loaded from COCO or an ImageFolder tree."""

    root: Path
    images: list[DatasetImage]
    categories: list[Category]
    format: Literal["coco", "imagefolder"] = "coco"
    info: dict[str, Any] = field(default_factory=dict)  # dataset.json of a synth folder, when present
    orphan_annotations: list[int] = field(default_factory=list)  # annotation ids with no image

    def __len__(self) -> int:
        return len(self.images)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def category(self, category_id: int) -> Category | None:
        for c in self.categories:
            if c.id == category_id:
                return c
        return None

    def label_of(self, image: DatasetImage) -> str:
        """A one-word label per image: the class for single-class images, ``none`` or ``mixed``."""
        names = sorted({self._name(a.category_id) for a in image.annotations})
        if not names:
            return "none"
        return names[0] if len(names) == 1 else "mixed"

    def _name(self, category_id: int) -> str:
        c = self.category(category_id)
        return c.name if c is not None else f"#{category_id}"

    def without(self, files: Iterable[str | Path]) -> Dataset:
        """A copy without the named images (relative file names or absolute paths)."""
        drop = {str(f) for f in files}
        keep = [im for im in self.images if im.file_name not in drop and str(im.path) not in drop]
        return replace(self, images=keep)

    def split_items(self) -> list[SplitItem]:
        """Items for :func:`keeneye.training.splits.split`: image id, label, metadata."""
        return [SplitItem(im.id, self.label_of(im), im.metadata) for im in self.images]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _bad(message: str, fix: str) -> InvalidInput:
    return InvalidInput("bad_dataset", message, fix=fix)


def load_coco(source: str | Path) -> Dataset:
    """Load a COCO folder (``annotations.json`` inside) or a COCO JSON file.

    ``file_name`` is resolved against the JSON's folder, then its ``images/`` sub-folder (CVAT and
    Label Studio exports). Structural problems raise ``InvalidInput("bad_dataset")``; per-file
    problems (missing images, bad boxes) are left to :func:`validate`.
    """
    src = Path(source).expanduser().absolute()
    json_path = src / ANNOTATIONS_FILE if src.is_dir() else src
    if not json_path.is_file():
        raise _bad(
            f"{json_path} does not exist", "point at a COCO folder with annotations.json or the JSON file"
        )
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"{json_path} is not valid JSON ({exc})", "re-export the annotations") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise _bad(f"{json_path} has no 'images' list", "a COCO file needs images, annotations, categories")
    root = json_path.parent

    try:
        categories = [
            Category(
                id=int(c["id"]),
                name=str(c["name"]),
                supercategory=str(c.get("supercategory", "")),
                extra={k: v for k, v in c.items() if k not in {"id", "name", "supercategory"}},
            )
            for c in doc.get("categories", [])
        ]
        images: list[DatasetImage] = []
        by_id: dict[int, DatasetImage] = {}
        for entry in doc["images"]:
            image_id = int(entry["id"])
            if image_id in by_id:
                raise _bad(f"{json_path}: image id {image_id} appears twice", "give every image a unique id")
            file_name = str(entry["file_name"]).replace("\\", "/")
            path = root / file_name
            if not path.exists() and (root / "images" / file_name).exists():
                path = root / "images" / file_name
            metadata = dict(entry.get("metadata") or {})
            for key, value in entry.items():  # keep extra top-level fields (CVAT, Label Studio) too
                if key not in {"id", "file_name", "width", "height", "metadata"}:
                    metadata.setdefault(key, value)
            image = DatasetImage(
                id=image_id,
                file_name=path.relative_to(root).as_posix(),
                path=path,
                width=int(entry.get("width", 0)),
                height=int(entry.get("height", 0)),
                metadata=metadata,
            )
            images.append(image)
            by_id[image_id] = image
        orphans: list[int] = []
        for a in doc.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            ann = Annotation(
                id=int(a["id"]),
                category_id=int(a["category_id"]),
                box=(x, y, x + w, y + h),
                area=float(a.get("area", w * h)),
                iscrowd=int(a.get("iscrowd", 0)),
                segmentation=a.get("segmentation") or None,
            )
            owner = by_id.get(int(a["image_id"]))
            if owner is None:
                orphans.append(ann.id)
            else:
                owner.annotations.append(ann)
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(
            f"{json_path}: malformed COCO entry ({exc!r})", "check the file against the COCO format"
        ) from exc

    info: dict[str, Any] = {}
    info_path = root / DATASET_INFO_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", info_path)
    return Dataset(
        root=root, images=images, categories=categories, format="coco", info=info, orphan_annotations=orphans
    )


def load_imagefolder(source: str | Path) -> Dataset:
    """One class per sub-folder (class names sorted, category ids 1…K); each image gets one whole-image
    annotation of its class. Image sizes are read from the file headers."""
    root = Path(source).expanduser().absolute()
    if not root.is_dir():
        raise _bad(f"{root} is not a folder", "point at a folder with one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    categories = [Category(id=i + 1, name=d.name) for i, d in enumerate(class_dirs)]
    images: list[DatasetImage] = []
    for cat, d in zip(categories, class_dirs, strict=True):
        for path in sorted(d.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            width, height = _image_size(path)
            image_id = len(images) + 1
            images.append(
                DatasetImage(
                    id=image_id,
                    file_name=path.relative_to(root).as_posix(),
                    path=path,
                    width=width,
                    height=height,
                    annotations=[
                        Annotation(
                            image_id, cat.id, (0.0, 0.0, float(width), float(height)), float(width * height)
                        )
                    ],
                )
            )
    return Dataset(root=root, images=images, categories=categories, format="imagefolder")


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header without decoding pixels; (0, 0) when unreadable."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            shape, _ = _tiff_shape(path)
            return shape[1], shape[0]
        from PIL import Image

        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # unreadable files are reported by validate()
        return 0, 0


def _tiff_shape(path: Path) -> tuple[tuple[int, int], int]:
    """((height, width), bands) of a TIFF's first page; planar (bands, h, w) or interleaved (h, w, bands)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        bands = int(page.samplesperpixel)
        return (int(page.imagelength), int(page.imagewidth)), bands


def to_imagefolder(coco_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a single-label COCO dataset into ``out_dir/<class>/<file>``; images with no or several
    classes are skipped (logged)."""
    ds = load_coco(coco_dir)
    out = Path(out_dir)
    skipped = 0
    for im in ds.images:
        names = {ds._name(c) for c in im.category_ids}
        if len(names) != 1 or not im.path.is_file():
            skipped += 1
            continue
        target = out / names.pop() / Path(im.file_name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(im.path, target)
    if skipped:
        log.warning("to_imagefolder skipped %d images without exactly one class", skipped)
    return out


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    severity: Severity
    code: str  # stable machine-readable reason, e.g. "missing_file"
    file: str
    message: str
    fix: str

    def one_line(self) -> str:
        return f"{self.severity}: {self.file}: {self.message} — {self.fix}"


@dataclass
class ValidationReport:
    n_images: int
    n_annotations: int
    class_counts: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # filled by the caller for --skip-invalid

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def invalid_files(self) -> list[str]:
        """Image files with at least one error (what ``--skip-invalid`` drops)."""
        seen: dict[str, None] = {}
        for p in self.errors:
            if p.code not in _DATASET_LEVEL_CODES:
                seen.setdefault(p.file, None)
        return list(seen)

    def codes(self) -> dict[str, list[str]]:
        """code → files, handy for tests and summaries."""
        out: dict[str, list[str]] = {}
        for p in self.problems:
            out.setdefault(p.code, []).append(p.file)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_images": self.n_images,
            "n_annotations": self.n_annotations,
            "class_counts": self.class_counts,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.__dict__ for p in self.problems],
            "skipped": self.skipped,
        }


_DATASET_LEVEL_CODES = frozenset({"empty_dataset", "rare_class", "orphan_annotation"})


def validate(
    dataset: Dataset,
    *,
    expected_bands: int | None = None,
    task: Literal["classify", "detect", "segment"] | None = None,
    decode: bool = True,
) -> ValidationReport:
    """Check every image and annotation; never raises for a bad file.

    ``expected_bands``: refuse TIFFs (multispectral) with another band count. ``task="classify"``
    also warns about images without a label. ``decode=False`` skips the pixel decode (header only).
    """
    problems: list[Problem] = []

    def add(severity: Severity, code: str, file: str, message: str, fix: str) -> None:
        problems.append(Problem(severity, code, file, message, fix))

    if task is None and dataset.info.get("task") in {"classify", "detect", "segment"}:
        task = dataset.info["task"]
    if dataset.format == "imagefolder":
        task = task or "classify"

    if not dataset.images:
        add(
            "error",
            "empty_dataset",
            str(dataset.root),
            "the dataset has no images",
            "add images or fix the path",
        )

    category_ids = {c.id for c in dataset.categories}
    first_by_hash: dict[str, DatasetImage] = {}
    n_annotations = 0
    for im in dataset.images:
        f = im.file_name
        n_annotations += len(im.annotations)
        if not im.path.is_file():
            add(
                "error",
                "missing_file",
                f,
                "image file does not exist",
                "restore the file or remove it from the dataset",
            )
            continue
        size = _check_image(im, expected_bands, decode, add)
        w, h = size if size is not None else (im.width, im.height)
        for a in im.annotations:
            if a.category_id not in category_ids:
                add(
                    "error",
                    "unknown_category",
                    f,
                    f"annotation {a.id} has category id {a.category_id}, not in categories",
                    "add the category or relabel the annotation",
                )
            x1, y1, x2, y2 = a.box
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                add(
                    "error",
                    "empty_box",
                    f,
                    f"annotation {a.id} box {a.box} has non-positive size",
                    "redraw the box",
                )
            elif w > 0 and h > 0 and (x1 < -0.5 or y1 < -0.5 or x2 > w + 0.5 or y2 > h + 0.5):
                add(
                    "error",
                    "box_outside_image",
                    f,
                    f"annotation {a.id} box {_fmt_box(a.box)} lies outside the {w}×{h} image",
                    "clip the box to the image or fix the image size",
                )
        if task == "classify" and not im.annotations:
            add("warning", "unlabelled", f, "image has no label", "label it or remove it")
        try:
            digest = im.sha256()
        except OSError:
            continue
        first = first_by_hash.get(digest)
        if first is None:
            first_by_hash[digest] = im
        elif sorted(map(dataset._name, first.category_ids)) != sorted(map(dataset._name, im.category_ids)):
            add(
                "error",
                "conflicting_duplicate",
                f,
                f"same bytes as {first.file_name} but different labels",
                "decide on one label and remove the other copy",
            )
        else:
            add(
                "warning",
                "duplicate",
                f,
                f"same bytes as {first.file_name}",
                "remove the copy; duplicates leak between train and test",
            )

    for ann_id in dataset.orphan_annotations:
        add(
            "warning",
            "orphan_annotation",
            ANNOTATIONS_FILE,
            f"annotation {ann_id} references an image id that does not exist",
            "remove the annotation or add its image",
        )

    class_counts = _class_counts(dataset)
    for name, count in class_counts.items():
        if count < 2:
            add(
                "warning",
                "rare_class",
                name,
                f"class {name!r} has {count} image(s); it cannot appear in both train and test",
                "add images of this class or merge it into another",
            )
    return ValidationReport(len(dataset.images), n_annotations, class_counts, problems)


def _fmt_box(box: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _class_counts(dataset: Dataset) -> dict[str, int]:
    """Images per category (an image counts once per class it contains), every category listed."""
    counts: Counter[str] = Counter({c.name: 0 for c in dataset.categories})
    for im in dataset.images:
        for cid in set(im.category_ids):
            c = dataset.category(cid)
            if c is not None:
                counts[c.name] += 1
    return {c.name: counts[c.name] for c in dataset.categories}


def _check_image(
    im: DatasetImage, expected_bands: int | None, decode: bool, add: Any
) -> tuple[int, int] | None:
    """Decode check; returns the real (width, height) or None when unreadable."""
    f = im.file_name
    try:
        if im.path.suffix.lower() in TIFF_SUFFIXES:
            (h, w), bands = _tiff_shape(im.path)
            if decode:
                import tifffile

                tifffile.imread(im.path)
        else:
            bands = 0
            if decode:
                arr = cv2.imdecode(np.fromfile(im.path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
                if arr is None:
                    raise ValueError("OpenCV cannot decode it")
                h, w = arr.shape[:2]
            else:
                w, h = _image_size(im.path)
                if w == 0:
                    raise ValueError("unreadable header")
    except Exception as exc:
        add("error", "unreadable_image", f, f"cannot decode image ({exc})", "re-export or remove the file")
        return None
    if expected_bands is not None and bands and bands != expected_bands:
        add(
            "error",
            "wrong_band_count",
            f,
            f"has {bands} bands, expected {expected_bands}",
            "check the camera's band map or drop the file",
        )
    if im.width and im.height and (im.width, im.height) != (w, h):
        add(
            "error",
            "size_mismatch",
            f,
            f"annotations say {im.width}×{im.height}, the file is {w}×{h}",
            "fix width/height in the annotations",
        )
    return w, h


# --------------------------------------------------------------------------------------------------
# Version
# --------------------------------------------------------------------------------------------------


def dataset_manifest(dataset: Dataset) -> dict[str, Any]:
    """The canonical description that :func:`dataset_version` hashes: sorted relative file names,
    content hashes and labels (category names, rounded boxes, segmentation digests). Absolute paths
    and ids are left out so a copied folder has the same manifest."""
    files = []
    for im in sorted(dataset.images, key=lambda i: i.file_name):
        try:
            digest = im.sha256()
        except OSError:
            digest = "missing"
        labels = sorted(
            (
                {
                    "category": dataset._name(a.category_id),
                    "box": [round(v, 2) for v in a.box],
                    "segmentation": _digest(a.segmentation) if a.segmentation else None,
                }
                for a in im.annotations
            ),
            key=lambda d: json.dumps(d, sort_keys=True),
        )
        files.append({"file": im.file_name, "sha256": digest, "labels": labels})
    return {"format": 1, "categories": sorted(dataset.class_names), "files": files}


def dataset_version(dataset: Dataset) -> str:
    """sha256 (hex) of the canonical manifest: equal for equal data, different when one pixel or one
    label changes."""
    return _digest(dataset_manifest(dataset))


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()
