"""The MLflow client: created lazily, one per URI per process, with MLflow's errors made keeneye's.

MLflow is imported inside these functions on purpose: importing it costs ~0.7 s, which every CLI
command that never touches the registry would otherwise pay. It is not a cycle dodge.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keeneye.domain import BackendHealth, BackendUnavailable, KeeneyeError, NotFound
from keeneye.settings import Settings, mask_url, split_url

if TYPE_CHECKING:  # importing mlflow costs ~0.7 s at run time (see the module docstring)
    from mlflow.tracking import MlflowClient

SETTING = "KEENEYE_REGISTRY_URI"
SCHEMES = {
    "sqlite": "local MLflow store",
    "http": "MLflow tracking server",
    "https": "MLflow tracking server",
}
_HEALTH_TIMEOUT_S = 3.0


_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def _quiet_mlflow() -> None:
    """Keep MLflow's progress bars, INFO lines and emoji run links out of keeneye's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A dead tracking server would otherwise be retried for minutes with MLflow's defaults.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow  # noqa: F401  (importing mlflow configures its loggers; adjust them afterwards)

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)


def mlflow_client(uri: str) -> Any:
    with _clients_lock:
        client = _clients.get(uri)
        if client is None:
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            _clients[uri] = client
        return client


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory)."""
    rest = uri.split(":///", 1)[1] if ":///" in uri else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def check_uri(uri: str) -> str:
    scheme, _ = split_url(SETTING, uri, SCHEMES)
    return str(scheme)


def probe_http(uri: str) -> tuple[bool, str]:
    """GET ``<uri>/health`` with a short timeout: (reachable, detail)."""
    import httpx

    url = uri.rstrip("/") + "/health"
    try:
        response = httpx.get(url, timeout=_HEALTH_TIMEOUT_S, follow_redirects=True)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if response.status_code >= 400:
        return False, f"GET /health answered HTTP {response.status_code}"
    return True, "GET /health OK"


@contextlib.contextmanager
def mlflow_errors(uri: str, what: str) -> Iterator[None]:
    """Turn MLflow's exceptions into keeneye's one-line errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        first = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(f"{what}: {first}") from exc
        if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"):
            raise KeeneyeError(f"{what}: {first}") from exc
        raise BackendUnavailable(
            SETTING, mask_url(uri), f"{what}: {first}", fix=f"check that {SETTING} points at a working MLflow"
        ) from exc
    except OSError as exc:
        raise BackendUnavailable(
            SETTING, mask_url(uri), f"{what}: {exc}", fix=f"check that {SETTING} is reachable and writable"
        ) from exc


def registry_health(settings: Settings) -> BackendHealth:
    """Whether the registry answers; never raises for an unreachable one and never hangs."""
    uri = settings.registry_uri
    shown = mask_url(uri)
    fix = f"set {SETTING} to a reachable MLflow (sqlite:///path/mlflow.db or http://host:5000)"
    try:
        scheme = check_uri(uri)
    except KeeneyeError as exc:
        return BackendHealth(SETTING, shown, False, detail=exc.message, fix=exc.fix or fix)
    import mlflow

    version = str(mlflow.__version__)
    if scheme in ("http", "https"):
        ok, detail = probe_http(uri)
        return BackendHealth(SETTING, shown, ok, version=version, detail=detail, fix="" if ok else fix)
    path = sqlite_path(uri)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise OSError(f"{path.parent} is not writable")
        with mlflow_errors(uri, "list registered models"):
            mlflow_client(uri).search_registered_models(max_results=1)
    except (KeeneyeError, OSError) as exc:
        detail = exc.message if isinstance(exc, KeeneyeError) else str(exc)
        return BackendHealth(SETTING, shown, False, version=version, detail=detail, fix=fix)
    return BackendHealth(SETTING, shown, True, version=version, detail="MLflow SQLite store")
