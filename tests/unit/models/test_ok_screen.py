"""The cheap OK screen of seg-logits post-processing (line frames are OK 98.5 % of the time): a frame
whose every defect logit margin is below ``logit(thresholds.mask)`` is answered "no instances" without
a softmax, a resize or a connected-component pass — and the answer is exactly the full path's."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import numpy.typing as npt

from keeneye.domain import Decision
from keeneye.models import ModelManifest, decide_ok_defect, postprocess
from keeneye.models.manifest import Thresholds

pp: Any = importlib.import_module(
    "keeneye.models.postprocess"
)  # the module (the package exports the function)

TH = Thresholds(score=0.4, mask=0.4, min_area=4)


def manifest(th: Thresholds = TH) -> ModelManifest:
    return ModelManifest.parse(
        {
            "name": "line-inspection",
            "task": "segment",
            "output_format": "seg-logits",
            "input": {"name": "input", "width": 64, "height": 64, "channels": ["r", "g", "b"]},
            "classes": ["background", "scratch", "dent"],
            "background_class": 0,
            "thresholds": th.model_dump(),
        }
    )


def frame_logits(spot: float | None, size: int = 32) -> npt.NDArray[np.float32]:
    """Background logit 4 everywhere, defect logits 0; ``spot`` sets a 4×4 scratch patch's margin."""
    logits = np.zeros((3, size, size), dtype=np.float32)
    logits[0] = 4.0
    if spot is not None:
        logits[1, 10:14, 10:14] = 4.0 + spot
    return logits


def full_path(logits: npt.NDArray[np.float32], th: Thresholds) -> int:
    """Instances from the unscreened path: softmax, winner, components (the screen switched off)."""
    saved = pp.nothing_confident
    pp.nothing_confident = lambda *a: False
    try:
        return len(pp.seg_logits_to_instances(logits, thresholds=th, background_class=0, image_size=(64, 64)))
    finally:
        pp.nothing_confident = saved


def test_screen_on_known_frames() -> None:
    cut = float(np.log(0.4 / 0.6))  # logit(0.4) = -0.405
    ok = frame_logits(None)
    near_miss = frame_logits(cut - 0.01)  # every margin just under the cut: screened out
    defect = frame_logits(2.0)  # margin 2: p(scratch) = 0.88 on the patch
    assert pp.nothing_confident(ok, TH, 0, None) is True
    assert pp.nothing_confident(near_miss, TH, 0, None) is True
    assert pp.nothing_confident(defect, TH, 0, None) is False
    m = manifest()
    for logits, expected, count in (
        (ok, Decision.ok, 0),
        (near_miss, Decision.ok, 0),
        (defect, Decision.defect, 1),
    ):
        found = postprocess(m, [logits])
        assert len(found) == count == full_path(logits, TH)
        assert decide_ok_defect(found, m) is expected
        assert found.masks is not None and found.masks.shape[1:] == (64, 64)
    [box] = postprocess(m, [defect]).boxes.tolist()
    assert box == [20.0, 20.0, 28.0, 28.0]  # the 4×4 patch at 32² is 8×8 at the 64² input


def test_screen_never_changes_an_answer() -> None:
    """Random logits around the cut: the screened and the full path agree on every one."""
    rng = np.random.default_rng(0)
    for th in (TH, Thresholds(score=0.3, mask=0.6, min_area=0), Thresholds(score=0.5, mask=0.5, min_area=16)):
        for _ in range(40):
            logits = rng.normal(0, 1.5, size=(3, 16, 16)).astype(np.float32)
            logits[0] += rng.uniform(0, 6)
            screened = pp.seg_logits_to_instances(
                logits, thresholds=th, background_class=0, image_size=(64, 64)
            )
            assert len(screened) == full_path(logits, th)


def test_screen_stays_off_where_it_cannot_be_exact() -> None:
    logits = frame_logits(None)
    assert pp.nothing_confident(logits, TH, None, None) is False  # no background channel
    assert pp.nothing_confident(logits[:1], TH, 0, None) is False  # binary output
    assert pp.nothing_confident(logits, Thresholds(mask=0.0), 0, None) is False
    assert pp.nothing_confident(logits, TH, 0, [5, 1, 2]) is False  # background not among the ids
