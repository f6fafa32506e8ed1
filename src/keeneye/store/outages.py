"""Which failures are a dependency being down, and what a caller should tell its own caller.

A request meets PostgreSQL restarting, an S3 endpoint that does not answer, or a full disk as an
exception from deep inside a driver. :func:`outage_of` turns such an exception into a
:class:`~keeneye.domain.BackendUnavailable` naming the setting, with a stable :func:`outage_reason`
(``database_unavailable``, ``object_store_unavailable``, ``storage_full``, …) and a
:func:`retry_after_seconds`; anything else (a constraint violated, a bug) is ``None`` and stays a
failure. The API answers an outage with 503 + ``Retry-After`` (docs/operations.md, "When a
dependency goes down"); nothing about the outage is retried here — the client retries, and the
connection pool, the S3 client and the file store reconnect by themselves on the next call.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from keeneye.domain import BackendUnavailable
from keeneye.settings import mask_url
from keeneye.store.engine import SETTING as DATABASE_SETTING
from keeneye.store.engine import _driver_message as driver_message
from keeneye.store.objects import OBJECTS_SETTING

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_AFTER_SECONDS = 5  # a restart or a blip: PostgreSQL restarts in a second or two
STORAGE_FULL_RETRY_AFTER_SECONDS = 30  # someone has to free space first

_REASONS = {
    DATABASE_SETTING: "database_unavailable",
    OBJECTS_SETTING: "object_store_unavailable",
    "KEENEYE_BUS_URL": "bus_unavailable",
    "KEENEYE_CACHE_URL": "cache_unavailable",
    "KEENEYE_REGISTRY_URI": "registry_unavailable",
}

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    BackendUnavailable,
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    OSError,
)
"""The exception types :func:`outage_of` may recognise (an API registers one handler for each)."""


class StorageFull(BackendUnavailable):
    """A write found no space left (``ENOSPC``) or the quota spent (``EDQUOT``)."""


def storage_full(setting: str, url: str, where: str, exc: OSError) -> StorageFull:
    return StorageFull(
        setting,
        url,
        f"no space left to write in {where} ({exc.strerror or exc})",
        fix="free disk space (keeneye retention run) or move the store to a larger disk",
    )


def outage_of(exc: BaseException, *, database_url: str = "") -> BackendUnavailable | None:
    """``exc`` as a dependency outage, or ``None`` when it is not one.

    ``database_url`` (masked before it is shown) names the database in the message; without it the
    message names only the setting.
    """
    if isinstance(exc, BackendUnavailable):
        return exc
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        shown = mask_url(database_url) if database_url else "the results database"
        return BackendUnavailable(
            DATABASE_SETTING,
            shown,
            driver_message(exc),
            fix="retry shortly; if it persists, check the database is running (keeneye doctor)",
        )
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        where = exc.filename if isinstance(exc.filename, str) else "the local disk"
        return storage_full(OBJECTS_SETTING, "the local object store", where, exc)
    return None


def outage_reason(outage: BackendUnavailable) -> str:
    """The stable reason code of an outage: ``storage_full``, or ``<backend>_unavailable``."""
    if isinstance(outage, StorageFull):
        return "storage_full"
    return _REASONS.get(outage.setting, "backend_unavailable")


def retry_after_seconds(outage: BackendUnavailable) -> int:
    """Whole seconds a client should wait before it tries again."""
    return STORAGE_FULL_RETRY_AFTER_SECONDS if isinstance(outage, StorageFull) else RETRY_AFTER_SECONDS


__all__ = [
    "RETRY_AFTER_SECONDS",
    "TRANSIENT_ERRORS",
    "StorageFull",
    "outage_of",
    "outage_reason",
    "retry_after_seconds",
    "storage_full",
]
