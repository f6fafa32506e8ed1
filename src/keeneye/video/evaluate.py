"""TPR and FPR by seconds, and event recall, of recommended segments against ground-truth events.

- TPR = event seconds covered by a segment / event seconds;
- FPR = non-event seconds covered by a segment / non-event seconds;
- event recall = events that overlap at least one segment / events.

Computed on exact interval lengths (no rounding to whole seconds). The seed's bar: TPR > 0.9 and
FPR < 0.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from keeneye.video.segments import Segment, merge

SEED_MIN_TPR = 0.9
SEED_MAX_FPR = 0.2


@dataclass(frozen=True)
class Evaluation:
    tpr: float
    fpr: float
    event_recall: float
    event_seconds: float
    non_event_seconds: float
    covered_event_seconds: float
    covered_non_event_seconds: float
    n_events: int
    n_events_found: int
    n_segments: int

    @property
    def meets_seed(self) -> bool:
        return self.tpr > SEED_MIN_TPR and self.fpr < SEED_MAX_FPR

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "meets_seed": self.meets_seed}


def overlap(a: Sequence[Segment], b: Sequence[Segment]) -> float:
    """Seconds covered by both sets of segments (each set's own overlaps counted once)."""
    x, y = merge(a), merge(b)
    total, i, j = 0.0, 0, 0
    while i < len(x) and j < len(y):
        total += max(0.0, min(x[i].stop, y[j].stop) - max(x[i].start, y[j].start))
        if x[i].stop < y[j].stop:
            i += 1
        else:
            j += 1
    return total


def evaluate(segments: Sequence[Segment], events: Sequence[Segment], duration: float) -> Evaluation:
    whole = [Segment(0.0, duration)]
    segs = [Segment(max(0.0, s.start), min(duration, s.stop)) for s in segments if s.start < duration]
    event_seconds = overlap(events, whole)
    covered = overlap(segs, whole)
    covered_events = overlap(segs, events)
    non_event = duration - event_seconds
    found = sum(1 for e in events if overlap([e], segs) > 0)
    return Evaluation(
        tpr=covered_events / event_seconds if event_seconds else 1.0,
        fpr=(covered - covered_events) / non_event if non_event else 0.0,
        event_recall=found / len(events) if events else 1.0,
        event_seconds=event_seconds,
        non_event_seconds=non_event,
        covered_event_seconds=covered_events,
        covered_non_event_seconds=covered - covered_events,
        n_events=len(events),
        n_events_found=found,
        n_segments=len(merge(segs)),
    )
