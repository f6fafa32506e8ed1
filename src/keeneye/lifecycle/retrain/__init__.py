"""The retraining job: one queued run → a dataset → ``train_pipeline`` → the run's outcome.

:func:`run_retraining` executes a run that a trigger (or ``keeneye retrain``) requested:

1. **Dataset.** A new COCO folder ``<home>/datasets/<pipeline>/retrain-<run id>/`` holds

   * the champion's training data (the folder its registry tag ``keeneye.data_dir`` names, or the
     run's ``data_dir`` input), hard-linked where the file system allows, copied otherwise;
   * every labelled observation of the pipeline (the newest label per observation, at most
     ``max_feedback``), its image fetched from the object store and its label converted to COCO:
     ``{"class"}`` → one whole-image box, ``{"instances"}`` → boxes and polygons, an OK without
     instances → an image without annotations. A label that replaces a training image with the same
     bytes wins over it (people corrected it), and the feedback of an earlier retraining is not
     added twice;
   * with ``pseudo_labels``, observations nobody labelled whose champion answer was confident
     (classification top-1 ≥ 0.95; segmentation: every instance ≥ 0.95), marked ``"pseudo": true``
     and capped at 20 % of the dataset. Pseudo-labelled images only ever train (``split_dataset``
     keeps them out of validation and test), and a later retraining drops them and draws new ones.

   Every image carries ``keeneye_time``: the observation's arrival for feedback and pseudo-labels,
   and for the base data its own ``keeneye_time``, the spec's time key or ``captured_at``, else the
   champion's registration time.
2. **Split by time.** The spec's fractions and seed with strategy ``time`` on ``keeneye_time``: the
   test split holds the newest data, which is how the challenger and the champion will meet the
   future, and what both are compared on.
3. **Fine-tune.** Training starts from the champion's weights (the ``checkpoint.pt`` that
   ``train_pipeline`` keeps in its run folder) when they exist and fit the recipe's backbone; else
   from scratch, and the outcome says why.
4. **Train, gate, register** with :func:`~keeneye.training.run.train_pipeline` — the code of
   ``keeneye train`` — as actor ``keeneye-retrain`` with the run's cause as the reason.

The run finishes ``succeeded`` (registered, gates passed, alias ``challenger``), ``refused``
(registered without an alias: the gates said no) or ``failed`` (the error's one line), with the
outcome: version, gate result, challenger and champion metrics on the same test split, data version,
dataset sizes and timings.
"""

from keeneye.lifecycle.retrain.annotations import (
    PSEUDO_MIN_CONFIDENCE,
    CocoAnnotation,
    label_annotations,
    pseudo_label,
)
from keeneye.lifecycle.retrain.dataset import PSEUDO_MAX_SHARE, TIME_KEY, BuiltDataset, build_dataset
from keeneye.lifecycle.retrain.job import (
    ACTOR,
    base_data_dir,
    iter_outcome_lines,
    run_retraining,
    start_weights,
    time_splits,
)
from keeneye.lifecycle.retrain.sources import (
    ConfidentAnswer,
    LabelledObservation,
    confident_answers,
    latest_labels,
)

__all__ = [
    "ACTOR",
    "PSEUDO_MAX_SHARE",
    "PSEUDO_MIN_CONFIDENCE",
    "TIME_KEY",
    "BuiltDataset",
    "CocoAnnotation",
    "ConfidentAnswer",
    "LabelledObservation",
    "base_data_dir",
    "build_dataset",
    "confident_answers",
    "iter_outcome_lines",
    "label_annotations",
    "latest_labels",
    "pseudo_label",
    "run_retraining",
    "start_weights",
    "time_splits",
]
