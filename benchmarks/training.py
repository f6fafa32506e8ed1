"""Training quality benchmark: the three image pipelines on synthetic data, from scratch, on this CPU.

    .venv/bin/python benchmarks/training.py                     # all three
    .venv/bin/python benchmarks/training.py species-id --n 1500 # one, with another set size

Each pipeline: generate a synthetic set (seeded), run ``train_pipeline`` end to end (validate, split,
train, export + parity, evaluate the ONNX model on the test split, gates, register) in a temporary
KEENEYE_HOME, and print the measured figures against the targets of issue 4:

* species-id: macro-F1 ≥ 0.95
* line-inspection: image-level recall ≥ 0.95, precision ≥ 0.97, mask mAP@0.5 ≥ 0.6
* crop-health: mean IoU of the disease zones ≥ 0.6
* each within 10 minutes of CPU training
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("KEENEYE_CONFIG", os.devnull)

from keeneye.settings import Settings
from keeneye.training.run import train_pipeline
from keeneye.training.trainers import ProgressEvent

TIME_LIMIT_S = 600.0


@dataclass(frozen=True)
class Case:
    pipeline: str
    generate: Callable[[Path, int, int], Any]
    n: int
    overrides: dict[str, Any]
    epochs: int
    targets: dict[str, float] = field(default_factory=dict)


def _species(out: Path, n: int, seed: int) -> Any:
    from keeneye.training.synth.species import generate_species

    return generate_species(out, n, seed=seed, size=64, overwrite=True)


def _line(out: Path, n: int, seed: int) -> Any:
    from keeneye.training.synth.line import generate_line

    # Training sets are enriched with defects (a real line has ~1.5 %): half the frames are defective.
    return generate_line(out, n, seed=seed, size=128, defect_rate=0.5, batch_size=25, overwrite=True)


def _crop(out: Path, n: int, seed: int) -> Any:
    from keeneye.training.synth.crop import generate_crop

    return generate_crop(out, n, seed=seed, size=128, tiles_per_field=8, overwrite=True)


CASES = {
    "species-id": Case(
        "species-id",
        _species,
        1500,
        {"backbone": "resnet10t", "image_size": 64, "batch_size": 32, "learning_rate": 3e-3, "patience": 8},
        30,
        {"macro_f1": 0.95},
    ),
    "line-inspection": Case(
        "line-inspection",
        _line,
        600,
        {"backbone": "resnet18", "image_size": 128, "batch_size": 16, "learning_rate": 5e-3, "patience": 10},
        45,
        {"recall": 0.95, "precision": 0.97, "mask_map50": 0.6},
    ),
    "crop-health": Case(
        "crop-health",
        _crop,
        480,
        {"backbone": "resnet18", "image_size": 128, "batch_size": 16, "learning_rate": 5e-3, "patience": 10},
        45,
        {"mean_iou": 0.6},
    ),
}


def _print_epochs(event: ProgressEvent) -> None:
    if event.stage == "train" and event.done:
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
        print(f"   {event.message}  {metrics}", file=sys.stderr, flush=True)


def run_case(case: Case, root: Path, n: int | None, epochs: int | None, seed: int) -> dict[str, Any]:
    data = root / f"data-{case.pipeline}"
    t0 = time.perf_counter()
    case.generate(data, n or case.n, seed)
    synth_s = time.perf_counter() - t0
    settings = Settings(home=root / f"home-{case.pipeline}")
    overrides = {**case.overrides, "max_seconds": TIME_LIMIT_S - 60}  # leave time for export + evaluation
    result = train_pipeline(
        settings,
        case.pipeline,
        data,
        epochs=epochs or case.epochs,
        overrides=overrides,
        progress=_print_epochs,
    )
    train_s = result.timings.get("prepare", 0) + result.timings.get("train", 0)
    rows = []
    for metric, target in case.targets.items():
        value = result.metrics.get(metric)
        rows.append(
            {"metric": metric, "value": value, "target": target, "met": value is not None and value >= target}
        )
    return {
        "pipeline": case.pipeline,
        "images": n or case.n,
        "split": result.split_sizes,
        "synth_s": round(synth_s, 1),
        "train_s": round(train_s, 1),
        "total_s": round(result.timings["total"], 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "within_time": train_s <= TIME_LIMIT_S,
        "targets": rows,
        "gates_passed": result.gates.passed,
        "gate_reasons": result.gates.reasons,
        "metrics": {k: round(v, 4) for k, v in result.metrics.items()},
        "parity_max_abs_diff": result.parity.max_abs_diff,
        "config": result.config.to_params(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pipelines", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--n", type=int, default=None, help="images to generate (default per pipeline)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="keeneye-bench-") as tmp:
        for name in args.pipelines:
            results.append(run_case(CASES[name], Path(tmp), args.n, args.epochs, args.seed))
            if not args.json:
                r = results[-1]
                print(
                    f"\n== {r['pipeline']}: {r['images']} images (train/val/test {r['split']}), "
                    f"{r['epochs_run']} epochs (best {r['best_epoch']}), training {r['train_s']} s "
                    f"(limit {TIME_LIMIT_S:.0f} s: {'ok' if r['within_time'] else 'OVER'}), "
                    f"total {r['total_s']} s"
                )
                for row in r["targets"]:
                    value = "n/a" if row["value"] is None else f"{row['value']:.4f}"
                    print(
                        f"   {row['metric']:<12} {value:>8}  target ≥ {row['target']:.2f}  "
                        f"{'MET' if row['met'] else 'MISSED'}"
                    )
                print(f"   all metrics: {r['metrics']}")
                print(
                    "   gates: "
                    + ("passed" if r["gates_passed"] else "failed: " + "; ".join(r["gate_reasons"]))
                )
                sys.stdout.flush()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0 if all(row["met"] for r in results for row in r["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
