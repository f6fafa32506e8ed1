"""Backups of the embedded deployment that restore: ``keeneye backup create | verify | restore``.

A backup is a folder (or the same folder as one ``.tar``) laid out like a keeneye home, with a
``manifest.json`` that lists every file with its size and SHA-256, the versions that made it, the
results database's Alembic revision and the rows of every table::

    manifest.json   keeneye.db   bus.db   mlflow.db   mlartifacts/…   objects/<key>   keeneye.yaml

Consistent while ``keeneye up`` runs: the databases are copied with SQLite's online backup API
(:func:`keeneye.store.copy_sqlite`), the results database first, then the bus, then the object store's
objects — an object is written before the row that names it, so every object a copied row names was
there to copy; objects written later are extra, never missing. The registry's database is copied
before its artifact folder for the same reason. A backup is built in a hidden folder beside its
destination and renamed into place when whole: an interrupted one never looks finished.

``verify`` checks the manifest's hashes, ``PRAGMA integrity_check`` of every database, that every
observation with a prediction has its object in the backup with the recorded SHA-256, and that every
registered model version has its artifacts. ``restore`` verifies, then writes the embedded layout into
a fresh home: the databases, each object through the object store (so its content type is kept),
the artifact folder with MLflow's absolute artifact URIs moved to the new home, and the config. An
older results database is migrated to this keeneye's head; a newer one is refused. Last, every served
model version (champion, challenger) is downloaded from the restored registry and its recorded
SHA-256 checked, as serving would.

The scaled deployment (PostgreSQL, Kafka, S3, an MLflow server) is backed up with those systems' own
tools: docs/backup.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from keeneye.domain import KeeneyeError, NotFound
from keeneye.registry import SERVING_ALIASES, ModelRegistry
from keeneye.settings import Settings, load_settings, mask_url
from keeneye.store import (
    NewObject,
    ObjectInfo,
    ResultsDB,
    alembic_revision,
    copy_sqlite,
    integrity_problems,
    known_revision,
    open_object_store,
    predicted_objects,
    rebase_mlflow_artifacts,
    registered_versions,
    sqlite_file,
    table_counts,
)

FORMAT = "keeneye-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RESULTS_DB = "keeneye.db"
BUS_DB = "bus.db"
REGISTRY_DB = "mlflow.db"
DATABASES = (RESULTS_DB, BUS_DB, REGISTRY_DB)
OBJECTS = "objects"
ARTIFACTS = "mlartifacts"  # where keeneye's registry keeps artifacts on a SQLite store: <home>/mlartifacts
CONFIG = "keeneye.yaml"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
SCALED_FIX = "back up the scaled deployment with its own tools as docs/backup.md describes"
_CHUNK = 1024 * 1024
_SPOOL_BYTES = 64 * 1024 * 1024  # an object up to this size goes into the archive from memory
_GROUP_OBJECTS = 256  # objects a restore writes with one flush (ObjectStore.put_many) …
_GROUP_BYTES = 16 * 1024 * 1024  # … or bytes
_RESTORE_THREADS = 8

Progress = Callable[[int, int], None]


def _no_progress(_done: int, _total: int) -> None:
    return None


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupFile:
    """One file of a backup: its path inside it (POSIX), size and SHA-256; an object's content type."""

    path: str
    size: int
    sha256: str
    content_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.content_type is None:
            del data["content_type"]
        return data


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds and what made it (``manifest.json``)."""

    created_at: str
    keeneye_version: str
    mlflow_version: str
    sqlite_version: str
    alembic_revision: str | None
    source_home: str
    artifact_root: str  # the file:// URI of the registry's artifact folder in the source home
    counts: dict[str, dict[str, int]]  # database file → table → rows
    files: tuple[BackupFile, ...]
    excluded: tuple[str, ...] = ()  # what is not in the backup, and why
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def summary(self) -> dict[str, int]:
        """The counts a person looks at first."""
        results, bus, registry = (self.counts.get(db, {}) for db in DATABASES)
        return {
            "observations": results.get("observations", 0),
            "predictions": results.get("predictions", 0),
            "objects": sum(1 for f in self.files if f.path.startswith(f"{OBJECTS}/")),
            "model_versions": registry.get("model_versions", 0),
            "bus_messages": bus.get("messages", 0),
            "files": len(self.files),
            "bytes": sum(f.size for f in self.files),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "keeneye_version": self.keeneye_version,
            "mlflow_version": self.mlflow_version,
            "sqlite_version": self.sqlite_version,
            "alembic_revision": self.alembic_revision,
            "source_home": self.source_home,
            "artifact_root": self.artifact_root,
            "summary": self.summary(),
            "counts": self.counts,
            "excluded": list(self.excluded),
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: Any) -> BackupManifest:
        """Raises :class:`ValueError` (with what is wrong) for anything but a manifest this code reads."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"format version {data.get('format_version')!r}; this keeneye reads version {FORMAT_VERSION}"
            )
        try:
            files = tuple(
                BackupFile(str(f["path"]), int(f["size"]), str(f["sha256"]), f.get("content_type"))
                for f in data["files"]
            )
            return cls(
                created_at=str(data["created_at"]),
                keeneye_version=str(data["keeneye_version"]),
                mlflow_version=str(data["mlflow_version"]),
                sqlite_version=str(data["sqlite_version"]),
                alembic_revision=data["alembic_revision"],
                source_home=str(data["source_home"]),
                artifact_root=str(data["artifact_root"]),
                counts={str(db): {str(t): int(n) for t, n in c.items()} for db, c in data["counts"].items()},
                files=files,
                excluded=tuple(str(e) for e in data.get("excluded", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed manifest ({type(exc).__name__}: {exc})") from exc


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupProblem:
    """One thing wrong with a backup or a restore: ``kind`` is a stable word, ``path`` what it names."""

    kind: str
    path: str
    detail: str


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: BackupManifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "alembic_revision": self.manifest.alembic_revision,
            "summary": self.manifest.summary(),
            "excluded": list(self.manifest.excluded),
        }


@dataclass
class VerifyReport:
    """What ``backup verify`` checked and found."""

    source: str
    manifest: BackupManifest | None = None
    files: int = 0
    bytes: int = 0
    databases: int = 0
    predicted_objects: int = 0
    model_versions: int = 0
    problems: list[BackupProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, path: str, detail: str) -> None:
        self.problems.append(BackupProblem(kind, path, detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "created_at": self.manifest.created_at if self.manifest else None,
            "keeneye_version": self.manifest.keeneye_version if self.manifest else None,
            "alembic_revision": self.manifest.alembic_revision if self.manifest else None,
            "files": self.files,
            "bytes": self.bytes,
            "databases": self.databases,
            "predicted_objects": self.predicted_objects,
            "model_versions": self.model_versions,
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass
class RestoreResult:
    """What ``backup restore`` wrote and checked."""

    home: Path
    summary: dict[str, int]
    revision_before: str | None
    revision_after: str | None
    config: Path | None
    models_checked: list[str] = field(default_factory=list)
    problems: list[BackupProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "ok": self.ok,
            "summary": self.summary,
            "revision_before": self.revision_before,
            "revision_after": self.revision_after,
            "config": str(self.config) if self.config else None,
            "models_checked": self.models_checked,
            "problems": [asdict(p) for p in self.problems],
        }


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _describe(root: Path, rel: str, content_type: str | None = None) -> BackupFile:
    digest, size = hashlib.sha256(), 0
    with (root / rel).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return BackupFile(rel, size, digest.hexdigest(), content_type)


def _write_stream(chunks: Iterator[bytes], root: Path, rel: str, content_type: str) -> BackupFile:
    """Write ``chunks`` to ``root/rel``, hashing them on the way (objects are read once)."""
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return BackupFile(rel, size, digest.hexdigest(), content_type)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _config_file() -> Path | None:
    """The YAML file the settings were read from (``KEENEYE_CONFIG`` or ./keeneye.yaml), if any."""
    path = Path(os.environ.get("KEENEYE_CONFIG", CONFIG))
    if str(path) == os.devnull or not path.is_file():
        return None
    return path


def _objects_root(settings: Settings) -> Path | None:
    parts = urlsplit(settings.objects_url)
    return Path(unquote(parts.path)).absolute() if parts.scheme == "file" else None


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.is_relative_to(folder)


# --------------------------------------------------------------------------------------------------
# create
# --------------------------------------------------------------------------------------------------


def _required_sqlite(setting: str, url: str, what: str) -> Path:
    path = sqlite_file(url)
    if path is None:
        raise KeeneyeError(
            f"{setting} is {mask_url(url)}: `keeneye backup` copies the embedded deployment's SQLite {what}",
            fix=SCALED_FIX,
        )
    if not path.is_file():
        raise KeeneyeError(f"the {what} {path} does not exist: nothing to back up", fix="check KEENEYE_HOME")
    return path


def _optional_sqlite(setting: str, url: str, what: str, excluded: list[str]) -> Path | None:
    path = sqlite_file(url)
    if path is None:
        excluded.append(f"{what} at {mask_url(url)} ({setting}): not SQLite; {SCALED_FIX}")
        return None
    if not path.is_file():
        excluded.append(f"{what}: {path} does not exist yet")
        return None
    return path


def _check_destination(dest: Path, *, archive: bool, force: bool, settings: Settings) -> None:
    if _inside(dest, _objects_root(settings)) or _inside(dest, settings.home / ARTIFACTS):
        raise KeeneyeError(
            f"{dest} is inside the data being backed up",
            fix="write the backup elsewhere, ideally another disk",
        )
    if not dest.exists():
        return
    if archive:
        if not dest.is_file():
            raise KeeneyeError(f"{dest} exists and is not a file", fix="choose another name")
        if not force:
            raise KeeneyeError(f"{dest} already exists", fix="choose another name, or --force to replace it")
        return
    if not dest.is_dir():
        raise KeeneyeError(f"{dest} exists and is not a folder", fix="choose another name")
    if not any(dest.iterdir()):
        return
    if not (dest / MANIFEST).is_file():
        raise KeeneyeError(
            f"{dest} is a folder with files that are not a keeneye backup",
            fix="choose an empty or new folder",
        )
    if not force:
        raise KeeneyeError(
            f"{dest} already holds a backup", fix="choose another name, or --force to replace it"
        )


class _Builder:
    """Writes one backup: into the staging folder, or straight into the archive (then the staging
    folder only holds each database, artifact or config file while it is copied and hashed, and an
    object goes from the object store into the archive once). Remembers every file it wrote."""

    def __init__(self, staging: Path, progress: Progress, tar: tarfile.TarFile | None) -> None:
        self.staging = staging
        self.tar = tar
        self.files: list[BackupFile] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.progress = progress
        self.done = 0
        self.total = 0

    def step(self) -> None:
        self.done += 1
        self.progress(self.done, max(self.total, self.done))

    def _keep(self, rel: str, content_type: str | None = None) -> Path:
        self.files.append(_describe(self.staging, rel, content_type))
        return self.staging / rel

    def _archive(self, rel: str) -> None:
        if self.tar is not None:
            self.tar.add(self.staging / rel, arcname=rel)
            (self.staging / rel).unlink()

    def database(self, source: Path, name: str, read: Callable[[Path], None] = lambda _path: None) -> None:
        """Copy a live database; ``read`` looks at the copy before it goes into the archive."""
        copy_sqlite(source, self.staging / name)
        path = self._keep(name)
        self.counts[name] = table_counts(path)
        read(path)
        self._archive(name)
        self.step()

    def file(self, source: Path, rel: str) -> None:
        target = self.staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self._keep(rel)
        self._archive(rel)
        self.step()

    def object(self, chunks: Iterator[bytes], rel: str, content_type: str) -> None:
        if self.tar is None:
            self.files.append(_write_stream(chunks, self.staging, rel, content_type))
            return
        digest, size = hashlib.sha256(), 0
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, dir=str(self.staging)) as spool:
            for chunk in chunks:
                spool.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            spool.seek(0)
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = size, int(time.time()), 0o644
            self.tar.addfile(info, spool)
        self.files.append(BackupFile(rel, size, digest.hexdigest(), content_type))

    def manifest(self, manifest: BackupManifest) -> None:
        (self.staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=1), "utf-8")
        self._archive(MANIFEST)


def _registry_notes(registry_db: Path, artifact_root: str, excluded: list[str]) -> None:
    for v in registered_versions(registry_db):
        if not v.source.startswith(artifact_root + "/"):
            excluded.append(
                f"model {v.name} v{v.version}: its artifacts at {v.source} are outside the home's "
                f"{ARTIFACTS}/ folder and not in the backup"
            )


def create_backup(
    settings: Settings, dest: Path, *, force: bool = False, progress: Progress | None = None
) -> BackupResult:
    """Back up the embedded deployment ``settings`` names into ``dest`` (a folder, or ``….tar``)."""
    dest = dest.expanduser().absolute()
    archive = dest.suffix == ".tar"
    _check_destination(dest, archive=archive, force=force, settings=settings)
    excluded: list[str] = []
    results_db = _required_sqlite("KEENEYE_DATABASE_URL", settings.database_url, "results database")
    bus_db = _optional_sqlite("KEENEYE_BUS_URL", settings.bus_url, "message bus", excluded)
    registry_db = _optional_sqlite("KEENEYE_REGISTRY_URI", settings.registry_uri, "model registry", excluded)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    update = progress or _no_progress
    try:
        if not archive:
            manifest = _fill(
                _Builder(staging, update, None), settings, results_db, bus_db, registry_db, excluded
            )
            os.sync()  # every file of the backup on disk before it is renamed into place
            _move_into_place(staging, dest)
        else:
            tmp = staging.parent / f"{staging.name}.tar"
            try:
                with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                    builder = _Builder(staging, update, tar)
                    manifest = _fill(builder, settings, results_db, bus_db, registry_db, excluded)
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(dest, manifest)


def _fill(
    build: _Builder,
    settings: Settings,
    results_db: Path,
    bus_db: Path | None,
    registry_db: Path | None,
    excluded: list[str],
) -> BackupManifest:
    config = _config_file()
    artifacts_dir = settings.home / ARTIFACTS
    artifact_root = artifacts_dir.absolute().as_uri()
    build.total = 1 + (bus_db is not None) + (registry_db is not None) + (config is not None)
    revision: list[str | None] = []
    # Order is what makes the copy consistent (module docstring): rows, then bus, then objects.
    build.database(results_db, RESULTS_DB, lambda path: revision.append(alembic_revision(path)))
    if bus_db is not None:
        build.database(bus_db, BUS_DB)
    if registry_db is not None:
        build.database(registry_db, REGISTRY_DB, lambda path: _registry_notes(path, artifact_root, excluded))
    objects = open_object_store(settings)
    listed = list(objects.list())
    artifacts = _files_under(artifacts_dir) if registry_db is not None else []
    build.total += len(listed) + len(artifacts)
    gone = 0
    for info in listed:
        try:
            build.object(
                objects.stream(info.key), f"{OBJECTS}/{info.key}", info.content_type or DEFAULT_CONTENT_TYPE
            )
        except NotFound:
            gone += 1  # deleted (retention) since the listing: no copied row can still name it
        build.step()
    if gone:
        excluded.append(f"{gone} objects deleted while the backup ran (retention)")
    for path in artifacts:
        build.file(path, f"{ARTIFACTS}/{path.relative_to(artifacts_dir).as_posix()}")
    if config is not None:
        build.file(config, CONFIG)
    else:
        excluded.append("config: no keeneye.yaml in use (KEENEYE_* environment variables are not backed up)")
    manifest = BackupManifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        keeneye_version=_package_version("keeneye"),
        mlflow_version=_package_version("mlflow"),
        sqlite_version=sqlite3.sqlite_version,
        alembic_revision=revision[0],
        source_home=str(settings.home),
        artifact_root=artifact_root,
        counts=build.counts,
        files=tuple(sorted(build.files, key=lambda f: f.path)),
        excluded=tuple(excluded),
    )
    build.manifest(manifest)
    return manifest


def _move_into_place(staging: Path, dest: Path) -> None:
    old = None
    if dest.exists():  # an empty folder, or a backup --force replaces
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    staging.rename(dest)
    if old is not None:
        shutil.rmtree(old)


# --------------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(src: Path) -> Iterator[Path]:
    """The backup's folder: ``src`` itself, or a ``.tar`` unpacked into a temporary folder beside it."""
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise KeeneyeError(f"{src} does not exist", fix="give the backup's folder or .tar file")
    if not tarfile.is_tarfile(src):
        raise KeeneyeError(
            f"{src} is neither a backup folder nor a .tar archive", fix="give the backup's path"
        )
    near = src.parent if os.access(src.parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=".keeneye-backup-", dir=near) as tmp:
        try:
            with tarfile.open(src) as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, no '..', no links out
        except (tarfile.TarError, OSError) as exc:
            raise KeeneyeError(
                f"cannot unpack {src}: {exc}", fix="the archive is damaged; use another backup"
            ) from exc
        yield Path(tmp)


def verify_backup(src: Path, *, progress: Progress | None = None) -> VerifyReport:
    """Check the backup at ``src`` (folder or ``.tar``); problems are reported, never raised."""
    src = src.expanduser().absolute()
    with _opened(src) as root:
        return _verify(root, str(src), progress or _no_progress)


def _read_manifest(root: Path, report: VerifyReport) -> BackupManifest | None:
    path = root / MANIFEST
    if not path.is_file():
        report.add("manifest", MANIFEST, "no manifest.json: not a keeneye backup, or one that did not finish")
        return None
    try:
        return BackupManifest.from_dict(json.loads(path.read_text("utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        report.add("manifest", MANIFEST, str(exc))
        return None


def _verify(root: Path, source: str, progress: Progress) -> VerifyReport:
    report = VerifyReport(source)
    manifest = _read_manifest(root, report)
    if manifest is None:
        return report
    report.manifest = manifest
    listed = {f.path: f for f in manifest.files}
    on_disk = {p.relative_to(root).as_posix() for p in _files_under(root)} - {MANIFEST}
    for rel in sorted(on_disk - listed.keys()):
        report.add("unlisted_file", rel, "in the backup but not in its manifest")
    _verify_files(root, manifest, report, progress)
    sound = _verify_databases(root, manifest, report)
    if RESULTS_DB in sound:
        _verify_predicted_objects(root, listed, report)
    if REGISTRY_DB in sound:
        _verify_registry(root / REGISTRY_DB, manifest, listed, report)
    return report


def _verify_predicted_objects(root: Path, listed: dict[str, BackupFile], report: VerifyReport) -> None:
    for obj in predicted_objects(root / RESULTS_DB):
        report.predicted_objects += 1
        rel = f"{OBJECTS}/{obj.object_key}"
        stored = listed.get(rel)
        if stored is None or not (root / rel).is_file():
            report.add("prediction_object", rel, "a stored prediction's object is missing")
        elif stored.sha256 != obj.content_hash:
            report.add(
                "prediction_object",
                rel,
                f"sha256 {stored.sha256[:12]}… is not the recorded {obj.content_hash[:12]}…",
            )


def _verify_files(root: Path, manifest: BackupManifest, report: VerifyReport, progress: Progress) -> None:
    for i, f in enumerate(manifest.files, start=1):
        path = root / f.path
        if not path.is_file():
            report.add("missing_file", f.path, "listed in the manifest but not in the backup")
        else:
            got = _describe(root, f.path)
            report.files += 1
            report.bytes += got.size
            if got.size != f.size:
                report.add("size_mismatch", f.path, f"{got.size} bytes, the manifest says {f.size}")
            elif got.sha256 != f.sha256:
                report.add(
                    "hash_mismatch", f.path, f"sha256 {got.sha256[:12]}…, the manifest says {f.sha256[:12]}…"
                )
        progress(i, len(manifest.files))


def _verify_databases(root: Path, manifest: BackupManifest, report: VerifyReport) -> set[str]:
    """``integrity_check``, row counts and revision of each database; returns the sound ones."""
    sound = set()
    for name in DATABASES:
        path = root / name
        if not path.is_file():
            if name in manifest.counts:
                report.add("missing_file", name, "the manifest counts its rows but the file is missing")
            continue
        report.databases += 1
        problems = integrity_problems(path)
        for line in problems[:5]:
            report.add("integrity", name, line)
        if problems:
            continue
        sound.add(name)
        if table_counts(path) != manifest.counts.get(name):
            report.add("counts", name, "its tables' rows differ from the manifest's counts")
        if name == RESULTS_DB and (revision := alembic_revision(path)) != manifest.alembic_revision:
            report.add(
                "revision", name, f"at revision {revision}, the manifest says {manifest.alembic_revision}"
            )
    return sound


def _verify_registry(
    registry_db: Path, manifest: BackupManifest, listed: dict[str, BackupFile], report: VerifyReport
) -> None:
    prefix = manifest.artifact_root + "/"
    for v in registered_versions(registry_db):
        if not v.source.startswith(prefix):
            continue  # outside the home: listed under "excluded" when the backup was made
        report.model_versions += 1
        rel = f"{ARTIFACTS}/{unquote(v.source[len(prefix) :])}".rstrip("/") + "/"
        if not any(path.startswith(rel) for path in listed):
            report.add(
                "model_artifacts",
                rel.rstrip("/"),
                f"model {v.name} v{v.version} has no artifacts in the backup",
            )


# --------------------------------------------------------------------------------------------------
# restore
# --------------------------------------------------------------------------------------------------


def _check_home(home: Path, *, force: bool) -> None:
    if home.exists() and not home.is_dir():
        raise KeeneyeError(f"{home} exists and is not a folder", fix="choose a new folder for --home")
    if home.is_dir() and any(home.iterdir()) and not force:
        raise KeeneyeError(
            f"{home} is not empty",
            fix="restore into a new or empty folder, or --force to replace its databases, objects, registry",
        )


def _clear(home: Path) -> None:
    """What a restore replaces in a home (``--force``); everything else in it is left alone."""
    for name in DATABASES:
        for suffix in ("", "-wal", "-shm", "-journal"):
            (home / f"{name}{suffix}").unlink(missing_ok=True)
    for folder in (OBJECTS, ARTIFACTS, "models"):  # models/: the bundle cache, stale after a restore
        shutil.rmtree(home / folder, ignore_errors=True)
    (home / CONFIG).unlink(missing_ok=True)


def _embedded(home: Path) -> Settings:
    """Settings of the embedded layout in ``home``, whatever URLs the environment names."""
    return load_settings(
        home=home, database_url="", bus_url="", objects_url="", cache_url="", registry_uri=""
    )


def restore_backup(
    src: Path, home: Path, *, force: bool = False, progress: Progress | None = None
) -> RestoreResult:
    """Restore the backup at ``src`` into the home ``home`` (new or empty, or any with ``force``).

    Raises :class:`KeeneyeError` before writing anything when the backup fails verification or its
    results database is newer than this keeneye.
    """
    src, home = src.expanduser().absolute(), home.expanduser().absolute()
    _check_home(home, force=force)
    update = progress or _no_progress
    target = _embedded(home)
    with _opened(src) as root:
        # One bar for both halves: hashing every file, then writing it.
        report = _verify(root, str(src), lambda done, total: update(done, 2 * total))
        if not report.ok or report.manifest is None:
            first = report.problems[0]
            raise KeeneyeError(
                f"the backup {src} fails verification ({len(report.problems)} problems; first: "
                f"{first.kind} {first.path}: {first.detail})",
                fix=f"run `keeneye backup verify {src}` for the list, and restore another backup",
            )
        manifest = report.manifest
        revision = manifest.alembic_revision
        if revision is None or not known_revision(revision):
            raise KeeneyeError(
                f"the backup's results database is at schema revision {revision}, which this keeneye "
                f"does not know (the backup was made by keeneye {manifest.keeneye_version})",
                fix="restore it with that keeneye version or a newer one",
            )
        if force:
            _clear(home)
        home.mkdir(parents=True, exist_ok=True)
        _copy_in(root, manifest, target, lambda done, total: update(total + done, 2 * total))
    result = RestoreResult(
        home, manifest.summary(), revision, None, home / CONFIG if (home / CONFIG).is_file() else None
    )
    db = ResultsDB(target.database_url)
    try:
        db.ensure_schema()  # an older backup is migrated to this keeneye's head
        result.revision_after = db.current_revision()
    finally:
        db.close()
    if (home / REGISTRY_DB).is_file():
        _check_served_models(target, result)
    return result


def _copy_in(root: Path, manifest: BackupManifest, target: Settings, progress: Progress) -> None:
    home = target.home
    objects = open_object_store(target)
    total, done = len(manifest.files), 0
    group: list[NewObject] = []
    pending: deque[Future[list[ObjectInfo]]] = deque()

    def settle(keep: int) -> None:
        nonlocal done
        while len(pending) > keep:
            done += len(pending.popleft().result())
            progress(done, total)

    # Objects in groups (ObjectStore.put_many: one flush per group, not four per object), several
    # groups at once: a restore is bound by the disk's syncs, which overlap.
    with ThreadPoolExecutor(max_workers=_RESTORE_THREADS) as pool:
        for f in manifest.files:
            source = root / f.path
            ctype = f.content_type or DEFAULT_CONTENT_TYPE
            if not f.path.startswith(f"{OBJECTS}/"):
                dest = home / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
                with dest.open("rb") as fh:
                    os.fsync(fh.fileno())
                done += 1
            elif f.size > _GROUP_BYTES:
                with source.open("rb") as fh:
                    objects.put(f.path.removeprefix(f"{OBJECTS}/"), fh, content_type=ctype)
                done += 1
            else:
                group.append(NewObject(f.path.removeprefix(f"{OBJECTS}/"), source.read_bytes(), ctype))
                if len(group) >= _GROUP_OBJECTS or sum(len(o.data) for o in group) >= _GROUP_BYTES:
                    pending.append(pool.submit(objects.put_many, list(group)))
                    group.clear()
                    settle(_RESTORE_THREADS)  # bounds the bytes held in memory
            progress(done, total)
        if group:
            pending.append(pool.submit(objects.put_many, list(group)))
        settle(0)
    if (home / REGISTRY_DB).is_file():
        rebase_mlflow_artifacts(home / REGISTRY_DB, manifest.artifact_root, (home / ARTIFACTS).as_uri())


def _check_served_models(target: Settings, result: RestoreResult) -> None:
    """Download every champion and challenger from the restored registry (sha256 checked), as serving
    would: proves the registry and its moved artifact URIs hold together."""
    registry = ModelRegistry(target)
    try:
        names = registry.names()
    except KeeneyeError as exc:
        result.problems.append(BackupProblem("registry", REGISTRY_DB, exc.one_line()))
        return
    for name in names:
        for alias in sorted(SERVING_ALIASES):
            try:
                info = registry.resolve(name, alias)
                if info is not None:
                    registry.download(name, info.version)
                    result.models_checked.append(f"{name} v{info.version} ({alias})")
            except KeeneyeError as exc:
                result.problems.append(BackupProblem("model_artifacts", f"{name}@{alias}", exc.one_line()))


__all__ = [
    "ARTIFACTS",
    "BUS_DB",
    "CONFIG",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "OBJECTS",
    "REGISTRY_DB",
    "RESULTS_DB",
    "BackupFile",
    "BackupManifest",
    "BackupProblem",
    "BackupResult",
    "RestoreResult",
    "VerifyReport",
    "create_backup",
    "restore_backup",
    "verify_backup",
]
