"""The model registry on MLflow: register bundles, move aliases under the gate invariant, download.

Each pipeline's model is an MLflow *registered model* (named like the pipeline). A registration logs
the bundle (``model.onnx`` + ``keeneye.json``) as artifacts of a run in the experiment
``keeneye/<pipeline>`` and creates a model version whose source is that artifact folder. Serving
follows aliases: ``champion`` serves, ``challenger`` runs in shadow/canary, ``previous`` remembers the
champion before the last promotion so a rollback knows where to go.

Invariant (ARCHITECTURE.md #4): a version whose gates failed never gets a serving alias, unless an
operator forces it with a reason — which is recorded on the version and in the audit events.

The MLflow client and its error mapping live in ``registry/client.py``; the version type and tag
names in ``registry/versions.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keeneye.domain import BackendUnavailable, InvalidInput, KeeneyeError, NotFound
from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from keeneye.registry.client import SETTING, check_uri, mlflow_client, mlflow_errors, probe_http, sqlite_path
from keeneye.registry.versions import (
    ARTIFACT_PATH,
    CHALLENGER,
    CHAMPION,
    FORCED_TAG_PREFIX,
    HISTORY_LIMIT,
    PREVIOUS,
    SERVING_ALIASES,
    TAG_CHAMPION_HISTORY,
    TAG_DATA_VERSION,
    TAG_GATES,
    TAG_METRICS,
    TAG_OUTPUT_FORMAT,
    TAG_SHA256,
    TAG_TASK,
    EventSink,
    GateStatus,
    ModelVersionInfo,
)
from keeneye.settings import Settings, mask_url

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
# A run file: relative, no "..", plain names (run_file never reads outside the run's artifacts).
_RUN_FILE_RE = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
RUN_FILE_MAX_BYTES = 32 * 1024 * 1024
_METRIC_KEY_RE = re.compile(r"^[\w\-./ ]{1,250}$")


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


class ModelRegistry:
    """Registered models and their aliases, on MLflow (``KEENEYE_REGISTRY_URI``).

    ``events`` receives every registration and alias move (the lead wires the results DB in).
    """

    def __init__(self, settings: Settings, *, events: EventSink | None = None) -> None:
        self.uri = settings.registry_uri
        self._scheme = check_uri(self.uri)
        self._home = settings.home
        self._events = events
        self._probed = False

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def _mlflow(self) -> Any:
        if self._scheme in ("http", "https") and not self._probed:
            # Fail fast with a one-line error instead of MLflow's retries against a dead server.
            ok, detail = probe_http(self.uri)
            if not ok:
                raise BackendUnavailable(
                    SETTING, mask_url(self.uri), detail, fix=f"start the MLflow server or correct {SETTING}"
                )
            self._probed = True
        elif self._scheme == "sqlite":
            path = sqlite_path(self.uri)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        return mlflow_client(self.uri)

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return mlflow_errors(self.uri, what)

    def _artifact_location(self, pipeline: str) -> str | None:
        # MLflow's SQLite default would put artifacts in ./mlruns of whatever folder we run in.
        if self._scheme == "sqlite":
            return (self._home / "mlartifacts" / pipeline).absolute().as_uri()
        return None  # a tracking server decides where its artifacts live

    def _record(
        self,
        pipeline: str,
        event: str,
        *,
        version: str | None,
        from_version: str | None = None,
        alias: str | None = None,
        actor: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        log.info(
            "model event %s: %s v%s alias=%s from=%s actor=%s reason=%s",
            event, pipeline, version, alias, from_version, actor, reason,
        )  # fmt: skip
        if self._events is not None:
            self._events.record_model_event(
                pipeline,
                event,
                model_version=version,
                from_version=from_version,
                alias=alias,
                actor=actor,
                reason=reason,
                details=dict(details or {}),
            )

    # --- reading --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every registered model name, sorted."""
        client = self._mlflow
        out: list[str] = []
        token = None
        with self._errors("list registered models"):
            while True:
                page = client.search_registered_models(max_results=1000, page_token=token)
                out.extend(m.name for m in page)
                token = page.token
                if not token:
                    break
        return sorted(out)

    def _aliases(self, pipeline: str) -> dict[str, str]:
        """alias → version of a registered model ({} when the model does not exist)."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow
        try:
            model = client.get_registered_model(pipeline)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return {}
            with self._errors(f"read model {pipeline}"):
                raise
        return {str(a): str(v) for a, v in (model.aliases or {}).items()}

    def _info(self, mv: Any, aliases: Mapping[str, str]) -> ModelVersionInfo:
        version = str(mv.version)
        return ModelVersionInfo(
            name=str(mv.name),
            version=version,
            aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
            created=datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=UTC),
            tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
            run_id=mv.run_id or None,
            source=str(mv.source or ""),
        )

    def get(self, pipeline: str, version: str) -> ModelVersionInfo:
        """One version; :class:`NotFound` naming the versions that do exist."""
        _check_name(pipeline)
        version = str(version)
        if _VERSION_RE.match(version):
            from mlflow.exceptions import MlflowException

            try:
                mv = self._mlflow.get_model_version(pipeline, version)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    with self._errors(f"read {pipeline} v{version}"):
                        raise
            else:
                return self._info(mv, self._aliases(pipeline))
        known = [v.version for v in self.versions(pipeline)]
        raise NotFound(
            f"model {pipeline!r} has no version {version!r}; versions: {', '.join(known) or '(none)'}",
            fix=f"run `keeneye models list --pipeline {pipeline}`",
        )

    def versions(self, pipeline: str) -> list[ModelVersionInfo]:
        """Every version of a pipeline's model, oldest first ([] when nothing is registered)."""
        _check_name(pipeline)
        client = self._mlflow
        aliases = self._aliases(pipeline)
        found: list[Any] = []
        token = None
        with self._errors(f"list versions of {pipeline}"):
            while True:
                page = client.search_model_versions(
                    filter_string=f"name='{pipeline}'", max_results=1000, page_token=token
                )
                found.extend(page)
                token = page.token
                if not token:
                    break
        infos = [self._info(mv, aliases) for mv in found]
        return sorted(infos, key=lambda i: int(i.version))

    def resolve(self, pipeline: str, alias: str = CHAMPION) -> ModelVersionInfo | None:
        """The version an alias points at, or None when the alias (or the model) does not exist."""
        _check_name(pipeline)
        aliases = self._aliases(pipeline)
        version = aliases.get(alias)
        if version is None:
            return None
        # Serving polls this every few seconds: two queries, not the three that get() would make.
        with self._errors(f"read {pipeline} v{version}"):
            mv = self._mlflow.get_model_version(pipeline, version)
        return self._info(mv, aliases)

    # --- registering ------------------------------------------------------------------------------

    def register(
        self,
        pipeline: str,
        bundle: ModelBundle,
        *,
        alias: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        gates_passed: bool | None = None,
        actor: str = "keeneye",
        reason: str = "",
        force: bool = False,
    ) -> ModelVersionInfo:
        """Validate a bundle, log it as run artifacts and create a new model version.

        ``gates_passed`` None falls back to the manifest's ``gates.passed`` (when it is a bool).
        With ``alias`` the new version gets it at once (``champion`` through :meth:`promote`).
        """
        _check_name(pipeline)
        if alias is not None:
            _check_alias(alias)
        manifest = _validate_bundle(bundle)
        if manifest.name != pipeline:
            raise InvalidInput(
                "bad_manifest",
                f"{bundle.manifest_path}: name is {manifest.name!r} but the model is for {pipeline!r}",
                fix=f'set "name": "{pipeline}" in the manifest, or register it for {manifest.name!r}',
            )
        if gates_passed is None and isinstance(manifest.gates.get("passed"), bool):
            gates_passed = bool(manifest.gates["passed"])
        gates: GateStatus = "unknown" if gates_passed is None else ("passed" if gates_passed else "failed")
        if alias in SERVING_ALIASES:
            # Refuse before anything is written, so a refused registration leaves no version behind.
            _check_gates(pipeline, "(new)", gates, alias, force=force, reason=reason)
        sha256 = bundle.sha256()
        client = self._mlflow
        own_run = run_id is None
        with self._errors(f"register a model for {pipeline}"):
            if run_id is None:
                experiment_id = self._experiment_id(pipeline)
                run = client.create_run(
                    experiment_id, run_name=f"register-{pipeline}", tags={"keeneye.pipeline": pipeline}
                )
                run_id = str(run.info.run_id)
            else:
                run = client.get_run(run_id)
            try:
                client.log_artifact(run_id, str(bundle.onnx_path), ARTIFACT_PATH)
                client.log_artifact(run_id, str(bundle.manifest_path), ARTIFACT_PATH)
                if own_run:
                    _log_run_data(client, run_id, manifest, sha256)
            except BaseException:
                if own_run:
                    client.set_terminated(run_id, status="FAILED")
                raise
            if own_run:
                client.set_terminated(run_id)
            self._ensure_registered_model(pipeline)
            version_tags = {
                TAG_SHA256: sha256,
                TAG_TASK: manifest.task.value,
                TAG_OUTPUT_FORMAT: manifest.output_format,
                TAG_GATES: gates,
                TAG_METRICS: json.dumps(_scalar_metrics(manifest.metrics), sort_keys=True)[:4900],
                **({TAG_DATA_VERSION: manifest.data_version} if manifest.data_version else {}),
                **dict(tags or {}),
            }
            mv = client.create_model_version(
                pipeline,
                f"{str(run.info.artifact_uri).rstrip('/')}/{ARTIFACT_PATH}",
                run_id=run_id,
                tags=version_tags,
            )
        version = str(mv.version)
        self._record(
            pipeline,
            "registered",
            version=version,
            actor=actor,
            reason=reason,
            details={"sha256": sha256, "gates": gates, "run_id": run_id},
        )
        if alias is not None:
            return self.set_alias(pipeline, alias, version, actor=actor, reason=reason, force=force)
        return self.get(pipeline, version)

    def _experiment_id(self, pipeline: str) -> str:
        from mlflow.exceptions import MlflowException

        client = self._mlflow
        name = f"keeneye/{pipeline}"
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=self._artifact_location(pipeline)))
        except MlflowException as exc:
            # Another process created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise exc from None
            return str(experiment.experiment_id)

    def _ensure_registered_model(self, pipeline: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._mlflow.create_registered_model(pipeline, tags={"keeneye.pipeline": pipeline})
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise

    # --- aliases ----------------------------------------------------------------------------------

    def set_alias(
        self, pipeline: str, alias: str, version: str, *, actor: str, reason: str, force: bool = False
    ) -> ModelVersionInfo:
        """Point ``alias`` at ``version``. ``champion`` goes through :meth:`promote` (keeps history)."""
        _check_alias(alias)
        if alias == PREVIOUS:
            raise InvalidInput(
                "reserved_alias",
                f"the alias {PREVIOUS!r} is kept by promote and rollback",
                fix="use `keeneye models promote` or `keeneye models rollback`",
            )
        if alias == CHAMPION:
            return self.promote(pipeline, version, actor=actor, reason=reason, force=force)
        info = self.get(pipeline, version)
        self._check_and_mark_forced(info, alias, force=force, reason=reason)
        before = self._aliases(pipeline).get(alias)
        with self._errors(f"set alias {alias} of {pipeline}"):
            self._mlflow.set_registered_model_alias(pipeline, alias, info.version)
        self._record(
            pipeline,
            "alias_set",
            version=info.version,
            from_version=before,
            alias=alias,
            actor=actor,
            reason=reason,
            details={"forced": force},
        )
        return self.get(pipeline, info.version)

    def delete_alias(self, pipeline: str, alias: str, *, actor: str, reason: str) -> None:
        """Remove an alias (e.g. end a challenger's shadow run); NotFound when it is not set."""
        _check_alias(alias)
        before = self._aliases(pipeline).get(alias)
        if before is None:
            raise NotFound(f"model {pipeline!r} has no alias {alias!r}")
        with self._errors(f"delete alias {alias} of {pipeline}"):
            self._mlflow.delete_registered_model_alias(pipeline, alias)
        self._record(
            pipeline,
            "alias_deleted",
            version=None,
            from_version=before,
            alias=alias,
            actor=actor,
            reason=reason,
        )

    def promote(
        self, pipeline: str, version: str, *, actor: str, reason: str, force: bool = False
    ) -> ModelVersionInfo:
        """Make ``version`` the champion; the old champion becomes ``previous`` (for rollback)."""
        info = self.get(pipeline, version)
        aliases = self._aliases(pipeline)
        before = aliases.get(CHAMPION)
        if before == info.version:
            log.info("%s v%s is already the champion", pipeline, info.version)
            return info
        self._check_and_mark_forced(info, CHAMPION, force=force, reason=reason)
        history = self._history(pipeline)
        client = self._mlflow
        with self._errors(f"promote {pipeline} v{info.version}"):
            if before is not None:
                history = [*history, before][-HISTORY_LIMIT:]
                client.set_registered_model_tag(pipeline, TAG_CHAMPION_HISTORY, ",".join(history))
                client.set_registered_model_alias(pipeline, PREVIOUS, before)
            client.set_registered_model_alias(pipeline, CHAMPION, info.version)
            if aliases.get(CHALLENGER) == info.version:
                client.delete_registered_model_alias(pipeline, CHALLENGER)  # it won: no longer a challenger
        self._record(
            pipeline,
            "promoted",
            version=info.version,
            from_version=before,
            alias=CHAMPION,
            actor=actor,
            reason=reason,
            details={"forced": force, "previous": before},
        )
        return self.get(pipeline, info.version)

    def rollback(self, pipeline: str, *, actor: str, reason: str, force: bool = False) -> ModelVersionInfo:
        """Give the champion alias back to the previous champion; NotFound when there is none."""
        _check_name(pipeline)
        aliases = self._aliases(pipeline)
        history = self._history(pipeline)
        target = aliases.get(PREVIOUS) or (history[-1] if history else None)
        if target is None:
            raise NotFound(
                f"model {pipeline!r} has no previous champion to roll back to",
                fix=f"promote a version instead: keeneye models promote {pipeline} VERSION",
            )
        info = self.get(pipeline, target)
        self._check_and_mark_forced(info, CHAMPION, force=force, reason=reason)
        before = aliases.get(CHAMPION)
        if history and history[-1] == target:
            history = history[:-1]
        client = self._mlflow
        with self._errors(f"roll back {pipeline}"):
            client.set_registered_model_alias(pipeline, CHAMPION, info.version)
            client.set_registered_model_tag(pipeline, TAG_CHAMPION_HISTORY, ",".join(history))
            if history:
                client.set_registered_model_alias(pipeline, PREVIOUS, history[-1])
            else:
                client.delete_registered_model_alias(pipeline, PREVIOUS)
        self._record(
            pipeline,
            "rolled_back",
            version=info.version,
            from_version=before,
            alias=CHAMPION,
            actor=actor,
            reason=reason,
            details={"forced": force},
        )
        return self.get(pipeline, info.version)

    def _history(self, pipeline: str) -> list[str]:
        with self._errors(f"read model {pipeline}"):
            model = self._mlflow.get_registered_model(pipeline)
        raw = str((model.tags or {}).get(TAG_CHAMPION_HISTORY, ""))
        return [v for v in raw.split(",") if _VERSION_RE.match(v)]

    def _check_and_mark_forced(self, info: ModelVersionInfo, alias: str, *, force: bool, reason: str) -> None:
        if alias not in SERVING_ALIASES:
            return
        _check_gates(info.name, info.version, info.gates, alias, force=force, reason=reason)
        if force and info.gates == "failed":
            with self._errors(f"tag {info.name} v{info.version}"):
                self._mlflow.set_model_version_tag(
                    info.name, info.version, f"{FORCED_TAG_PREFIX}{alias}", reason
                )

    # --- downloading ------------------------------------------------------------------------------

    def cache_dir(self, pipeline: str, version: str) -> Path:
        return self._home / "models" / pipeline / str(version)

    def download(self, pipeline: str, version: str) -> ModelBundle:
        """The bundle of a version in ``<home>/models/<pipeline>/<version>/``, verified by sha256.

        A cached copy whose hash matches is reused; otherwise it is downloaded to a temporary folder
        beside it and renamed into place, so a reader never sees a half-written bundle.
        """
        info = self.get(pipeline, version)
        final = self.cache_dir(pipeline, info.version)
        cached = _verified(final, info.sha256)
        if cached is not None:
            return cached
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=final.parent))
        try:
            with self._errors(f"download {pipeline} v{info.version}"):
                fetched = Path(self._fetch(info, tmp))
            bundle = _verified(fetched, info.sha256)
            if bundle is None:
                raise KeeneyeError(
                    f"the download of {pipeline} v{info.version} does not match its recorded sha256",
                    fix="the stored artifacts were changed or damaged; register the bundle again",
                )
            if final.exists():
                shutil.rmtree(final)  # a stale or damaged copy
            try:
                fetched.rename(final)
            except OSError:
                # Another process put a copy in place first; use it if it is good.
                again = _verified(final, info.sha256)
                if again is None:
                    raise
            result = _verified(final, info.sha256)
            if result is None:  # pragma: no cover - only if the folder vanished under us
                raise KeeneyeError(f"cached bundle {final} disappeared while downloading")
            return result
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fetch(self, info: ModelVersionInfo, into: Path) -> str:
        from mlflow.artifacts import download_artifacts

        if info.run_id:
            return str(
                download_artifacts(
                    run_id=info.run_id, artifact_path=ARTIFACT_PATH, dst_path=str(into), tracking_uri=self.uri
                )
            )
        return str(download_artifacts(artifact_uri=info.source, dst_path=str(into), tracking_uri=self.uri))

    def run_file(
        self, info: ModelVersionInfo, path: str, *, max_bytes: int = RUN_FILE_MAX_BYTES
    ) -> bytes | None:
        """One file of the run a version was registered from (``evaluation/evaluation.json`` of a
        ``keeneye train`` run, or the bundle's ``model/keeneye.json``); None when the version has no
        run or the run no such file. Read whole, so a file over ``max_bytes`` is refused."""
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        if not info.run_id or not _RUN_FILE_RE.match(path):
            return None
        with tempfile.TemporaryDirectory(prefix="keeneye-run-file-") as tmp:
            try:
                local = Path(
                    download_artifacts(
                        run_id=info.run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.uri
                    )
                )
            except MlflowException as exc:
                if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                    return None
                with self._errors(f"read {path} of {info.name} v{info.version}"):
                    raise
            if not local.is_file():
                return None  # a folder of that name
            if local.stat().st_size > max_bytes:
                raise KeeneyeError(
                    f"{path} of {info.name} v{info.version} is {local.stat().st_size} bytes, "
                    f"over the {max_bytes} bytes keeneye reads",
                    fix="open it in the MLflow UI instead",
                )
            return local.read_bytes()


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _check_name(pipeline: str) -> None:
    # Also keeps the name safe to interpolate into MLflow's filter strings.
    if not _NAME_RE.match(pipeline):
        raise InvalidInput(
            "bad_name", f"{pipeline!r} is not a valid model name", fix="use a lower-case slug like species-id"
        )


def _check_alias(alias: str) -> None:
    if not _ALIAS_RE.match(alias) or alias == "latest" or re.match(r"^v\d+$", alias):
        raise InvalidInput(
            "bad_alias",
            f"{alias!r} is not a valid alias",
            fix="use a lower-case word such as champion or challenger (not latest or v<number>)",
        )


def _check_gates(
    pipeline: str, version: str, gates: GateStatus, alias: str, *, force: bool, reason: str
) -> None:
    if gates != "failed":
        return
    if not force:
        raise KeeneyeError(
            f"{pipeline} v{version} failed its quality gates and cannot become {alias}",
            fix="train a model that passes the gates, or override with --force --reason TEXT",
        )
    if not reason.strip():
        raise InvalidInput(
            "reason_required",
            f"forcing {pipeline} v{version} to {alias} despite failed gates needs a reason",
            fix="add --reason TEXT",
        )


def _validate_bundle(bundle: ModelBundle) -> ModelManifest:
    """The bundle's manifest, after checking that ``model.onnx`` really is a valid ONNX model."""
    if not bundle.onnx_path.is_file():
        raise InvalidInput(
            "bad_bundle", f"{bundle.path} has no {MODEL_FILE}", fix="export the model to ONNX first"
        )
    if not bundle.manifest_path.is_file():
        raise InvalidInput("bad_bundle", f"{bundle.path} has no {MANIFEST_FILE}", fix="write a manifest")
    manifest = ModelManifest.load(bundle.manifest_path)
    import onnx

    try:
        # Checking by path also handles models with external data and those over 2 GB.
        onnx.checker.check_model(str(bundle.onnx_path))
        model = onnx.load(str(bundle.onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ValueError … for bad files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(
            "bad_model",
            f"{bundle.onnx_path} is not an ONNX model ({detail[:200]})",
            fix="export the model with torch.onnx.export or ultralytics export format=onnx",
        ) from exc
    if not model.graph.input or not model.graph.output:
        raise InvalidInput(
            "bad_model", f"{bundle.onnx_path} is not an ONNX model (graph has no inputs or outputs)"
        )
    return manifest


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, top-level metrics of a manifest (nested reports stay in the manifest)."""
    return {
        str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _log_run_data(client: Any, run_id: str, manifest: ModelManifest, sha256: str) -> None:
    from mlflow.entities import Metric, Param

    now = int(datetime.now(tz=UTC).timestamp() * 1000)
    params = [
        Param("task", manifest.task.value),
        Param("output_format", manifest.output_format),
        Param("sha256", sha256),
        Param("classes", str(len(manifest.classes))),
    ]
    if manifest.data_version:
        params.append(Param("data_version", manifest.data_version[:500]))
    # MLflow refuses some characters in metric keys; those metrics stay in the manifest only.
    metrics = [
        Metric(k, v, now, 0) for k, v in _scalar_metrics(manifest.metrics).items() if _METRIC_KEY_RE.match(k)
    ]
    client.log_batch(run_id, metrics=metrics, params=params)


def _verified(folder: Path, sha256: str) -> ModelBundle | None:
    """The bundle in ``folder`` when it is complete and its ONNX hash is ``sha256``."""
    if not (folder / MODEL_FILE).is_file() or not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        bundle = ModelBundle.load(folder)
    except InvalidInput:
        return None
    if sha256 and bundle.sha256() != sha256:
        return None
    return bundle
