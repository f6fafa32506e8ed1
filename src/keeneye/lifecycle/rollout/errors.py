"""The refusals of the rollout controller, each an ``InvalidInput`` with a stable reason, a status and
the fix: a bad value (422), a move the current state does not allow, a challenger that is already the
champion, a concurrent move, a registry refusal (409).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from keeneye.domain import InvalidInput, KeeneyeError
from keeneye.store import RolloutRecord


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """The registry refuses a move (failed gates) with a plain KeeneyeError: a 409, not a 500."""
    try:
        yield
    except KeeneyeError as exc:
        if type(exc) is not KeeneyeError:
            raise
        raise InvalidInput("refused", exc.message, status=409, fix=exc.fix) from exc


def one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, KeeneyeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def bad_rollout(message: str, *, fix: str | None = None) -> InvalidInput:
    return InvalidInput("bad_rollout", message, status=422, fix=fix)


def fraction(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise bad_rollout(
            f"{name} must be a fraction between 0 and 1, got {value!r}", fix=f"e.g. {name} 0.1 for 10 %"
        )
    return float(value)


def need_reason(reason: str, what: str) -> None:
    if not reason.strip():
        raise InvalidInput("reason_required", f"{what} needs a reason", fix="add --reason TEXT")


def wrong_state(record: RolloutRecord, action: str, fix: str) -> InvalidInput:
    versions = f" (champion v{record.champion_version}, challenger v{record.challenger_version})"
    return InvalidInput(
        "wrong_state",
        f"cannot {action}: pipeline {record.pipeline} is in {record.state.value}"
        + (versions if record.active else ""),
        status=409,
        fix=fix,
    )


def same_version(model: str, version: str) -> InvalidInput:
    return InvalidInput(
        "same_version",
        f"{model} v{version} is already the champion; a challenger must be another version",
        status=409,
        fix="register the new model and name it with --version",
    )


def conflict(pipeline: str) -> InvalidInput:
    return InvalidInput(
        "rollout_conflict",
        f"the rollout of {pipeline} changed while this move was being made",
        status=409,
        fix=f"check it with `keeneye models rollout {pipeline} --status` and try again",
    )
