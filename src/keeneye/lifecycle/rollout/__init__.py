"""Safe rollout of a challenger model: shadow, canary, promotion and rollback, per pipeline.

A new model version must earn its place on live traffic before it answers anyone. Each pipeline has
one row in ``rollouts`` and moves through ``stable → shadow → canary → stable``:

* **shadow** — the challenger runs beside the champion on a sample of inputs (``shadow_sample``); its
  predictions are stored as variant ``shadow`` and never returned. The controller measures how often it
  agrees with the champion on the same observations.
* **canary** — a fixed share of inputs (``canary_share``) is answered by the challenger (variant
  ``canary``). The controller compares error rate, p95 latency and online quality of both variants.
* back to **stable** — by *promotion* (the registry's ``promote`` moves the ``champion`` alias to the
  challenger; serving switches through the runtime's hot swap) or by *abort* / *rollback* (the
  champion never changed; right after a promotion an abort gives the alias back with the registry's
  ``rollback``).

Routing is a pure function of a key, so every process (API replicas, stream workers) sends the same
input to the same variant without talking to each other: the key's SHA-256, salted with the pipeline
and the challenger version, mapped to ``[0, 1)`` and compared with the share. Stream workers use the
observation id; the synchronous API uses the image's content hash (the observation id does not exist
before the answer is stored), so a retried request stays on its variant.

Every transition is one transaction: the ``rollouts`` row (compare-and-set on state and
``updated_at``, so two actors cannot both move it) and its ``model_events`` audit row
(``rollout_shadow``, ``rollout_canary``, ``rollout_promoted``, ``rollout_aborted``,
``rollout_rolled_back``). :class:`RolloutController` does the moves for people (CLI, API) and for the
scheduler (:meth:`RolloutController.tick`); what it compares is documented in ``docs/rollout.md``.
"""

from keeneye.lifecycle.rollout.controller import ACTIONS, RolloutController, TickResult
from keeneye.lifecycle.rollout.judging import (
    Agreement,
    Evaluation,
    RolloutPolicy,
    VariantStats,
    Verdict,
    answers_agree,
    canary_deadline,
    judge_canary,
    judge_shadow,
    mean_instance_iou,
)
from keeneye.store import RolloutRecord, RolloutState
from keeneye.store.rollouts import ACTIVE, read_rollout, rollout_rows

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "Agreement",
    "Evaluation",
    "RolloutController",
    "RolloutPolicy",
    "RolloutRecord",
    "RolloutState",
    "TickResult",
    "VariantStats",
    "Verdict",
    "answers_agree",
    "canary_deadline",
    "judge_canary",
    "judge_shadow",
    "mean_instance_iou",
    "read_rollout",
    "rollout_rows",
]
