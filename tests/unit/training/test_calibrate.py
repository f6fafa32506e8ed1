"""The OK/DEFECT decision calibrated on validation frames: the choice rule on known outcomes, and a
real bundle whose defects win their class with 0.42 only (a fixed 0.5 misses every one) plus single
bright pixels on OK frames (noise that only a minimum area rejects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keeneye.domain import Decision
from keeneye.models import decide_ok_defect, postprocess
from keeneye.models.testing import tiny_segmenter, write_bundle
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import Settings
from keeneye.training.calibrate import calibrate_decision, calibrated_manifest_changes, choose
from keeneye.training.datasets import load_coco
from keeneye.training.export import update_manifest
from keeneye.training.synth.common import SynthWriter, encode_png

SIZE = 32


def test_choose_takes_the_most_precise_candidate_that_reaches_the_recall() -> None:
    outcomes = {
        (0.2, 0): (0.80, 1.00),
        (0.3, 0): (0.95, 1.00),
        (0.4, 0): (1.00, 0.96),
        (0.5, 0): (1.00, 0.96),
        (0.6, 0): (1.00, 0.96),
        (0.7, 0): (1.00, 0.90),  # most precise too, but misses the recall
        (0.4, 4): (1.00, 0.96),  # as good, but a larger area: the smaller wins
    }
    assert choose(outcomes, 0.95) == (0.5, 0)  # the middle of the 0.4 … 0.6 plateau
    better = {**outcomes, (0.1, 0): (1.0, 1.0), (0.8, 4): (1.0, 1.0)}
    assert choose(better, 0.95) == (0.1, 0)  # equally precise, a better recall wins first


def test_choose_falls_back_to_the_best_recall_when_none_reaches_it() -> None:
    outcomes = {(0.2, 0): (0.5, 0.9), (0.3, 0): (0.7, 0.9), (0.5, 0): (1.0, 0.6)}
    assert choose(outcomes, 0.95) == (0.3, 0)  # fail-safe: the most defects caught, then precise
    with pytest.raises(ValueError):
        choose({}, 0.95)


def _frames(out: Path) -> None:
    """12 frames: 6 with a 6×6 'scratch' square at 0.55 in channels 0 and 1 (two defect classes share
    the probability: each wins with ≈ 0.42), 6 OK frames, 3 of them with one bright pixel."""
    out.mkdir(parents=True)
    (out / "images").mkdir()
    writer = SynthWriter(out, [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}])  # type: ignore[list-item]
    meta: Any = {"sku": "X"}
    for i in range(12):
        img = np.full((SIZE, SIZE, 3), 50, np.uint8)  # dark: background wins everywhere
        mask = np.zeros((SIZE, SIZE), bool)
        if i < 6:
            mask[10 + i : 16 + i, 8:14] = True
            img[mask, 0] = img[mask, 1] = round(0.55 * 255)
        elif i % 2:
            img[3, 3 + i, 0] = 250  # one hot pixel: confident, but one pixel
        rgb_as_bgr = img[..., ::-1].copy()  # encode_png takes BGR
        image_id = writer.add_image(f"images/f{i:02d}.png", encode_png(rgb_as_bgr), SIZE, SIZE, meta)
        if mask.any():
            writer.add_instance(image_id, "scratch", mask)
    info: Any = {"generator": "test", "task": "segment", "seed": 0, "drift": None, "size": SIZE}
    writer.finish({**info, "classes": ["scratch", "dent"], "novel_classes": []})


def _decisions(bundle: Any, dataset: Any, spec: Any) -> list[bool]:
    """Serving's OK/DEFECT for every frame (True = DEFECT)."""
    from keeneye.imaging import prepare_input
    from keeneye.models import OnnxModel
    from keeneye.training.torchdata import load_image

    model = OnnxModel.load(bundle)
    out = []
    for im in dataset.images:
        tensor, transform = prepare_input(load_image(im, spec, 10**7), bundle.manifest.input)
        head, _ = model.split([o[0] for o in model.run(tensor[None])])
        said = decide_ok_defect(postprocess(bundle.manifest, head, transform), bundle.manifest)
        out.append(said is Decision.defect)
    return out


def _setup(tmp_path: Path) -> tuple[Any, Any, Any, dict[int, str]]:
    """The frames, the line-inspection spec, a tiny 3-class segmenter at the spec's 0.5, categories."""
    _frames(tmp_path / "data")
    dataset = load_coco(tmp_path / "data")
    spec = PipelineCatalog(Settings(home=tmp_path / "home")).get("line-inspection")
    bundle = write_bundle(
        tmp_path / "bundle",
        tiny_segmenter(3, size=SIZE),
        output_format="seg-logits",
        input={"width": SIZE, "height": SIZE},
        classes=["background", "scratch", "dent"],
        background_class=0,
        thresholds={"score": 0.5, "mask": 0.5},
    )
    return dataset, spec, bundle, {c.id: c.name for c in dataset.categories}


def test_calibration_finds_the_threshold_and_area_serving_then_uses(tmp_path: Path) -> None:
    dataset, spec, bundle, categories = _setup(tmp_path)

    def decisions(b: Any) -> list[bool]:
        return _decisions(b, dataset, spec)

    truth = [i < 6 for i in range(12)]
    assert decisions(bundle)[:6] == [False] * 6  # 0.5 misses every defect …
    assert sum(decisions(bundle)[6:]) == 3  # … and rejects every hot pixel

    cal = calibrate_decision(bundle, spec, dataset.images, categories, max_pixels=10**7)
    assert cal is not None
    assert (cal.precision, cal.recall, cal.images, cal.defective, cal.reached) == (1.0, 1.0, 12, 6, True)
    assert 0.1 <= cal.threshold <= 0.4 and cal.min_area == 4  # a hot pixel is 1 pixel; a scratch 36
    calibrated = update_manifest(bundle, **calibrated_manifest_changes(bundle.manifest, cal))
    th = calibrated.manifest.thresholds
    assert (th.mask, th.score, th.min_area) == (cal.threshold, cal.threshold, 4)
    assert calibrated.manifest.extra["decision_calibration"]["val_recall"] == 1.0
    assert decisions(calibrated) == truth  # serving decides with the calibrated numbers


def test_nothing_to_calibrate_without_both_outcomes(tmp_path: Path) -> None:
    dataset, spec, bundle, categories = _setup(tmp_path)
    only_defective = dataset.images[:6]
    assert calibrate_decision(bundle, spec, only_defective, categories, max_pixels=10**7) is None
    assert calibrate_decision(bundle, spec, [], categories, max_pixels=10**7) is None
