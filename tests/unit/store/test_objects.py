"""The object-store contract, proved on every backend (file; S3 against moto), plus per-backend details."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import SecretStr

from keeneye.domain import BackendUnavailable, ConfigError, InvalidInput, MessageTooLarge, NotFound
from keeneye.settings import ObjectStoreSettings, S3Settings, Settings
from keeneye.store.objects import NewObject, ObjectStore, open_object_store
from tests.services import free_port

MiB = 1024 * 1024
LIMIT = 1000  # bytes; small so the size tests are fast

MakeStore = Callable[..., ObjectStore]


def s3_settings(
    tmp_path: Path, endpoint: str, url: str, limit: int = LIMIT, *, create_bucket: bool = True
) -> Settings:
    keys = SecretStr("test")  # moto accepts any credentials
    return Settings(
        home=tmp_path / "home",
        objects_url=url,
        s3=S3Settings(
            endpoint_url=endpoint, access_key_id=keys, secret_access_key=keys, create_bucket=create_bucket
        ),
        objects=ObjectStoreSettings(max_object_bytes=limit),
    )


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """Builds a store of the parametrised kind, through ``open_object_store`` as the app does."""

    def make(limit: int = LIMIT) -> ObjectStore:
        if request.param == "file":
            settings = Settings(
                home=tmp_path / "home",
                objects_url=(tmp_path / "objects").as_uri(),
                objects=ObjectStoreSettings(max_object_bytes=limit),
            )
        else:
            server = request.getfixturevalue("s3_server")
            # A fresh bucket per test, and a key prefix so prefix handling is always exercised.
            bucket = f"keeneye-test-{uuid4().hex[:8]}"
            settings = s3_settings(tmp_path, server.endpoint_url, f"s3://{bucket}/run", limit)
        return open_object_store(settings)

    return make


@pytest.fixture
def store(make_store: MakeStore) -> ObjectStore:
    return make_store()


class OneWayStream(io.RawIOBase):
    """A non-seekable stream (like a socket) that counts what was read from it."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._data = io.BytesIO(data)
        self.consumed = 0
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._fail_after is not None and self.consumed >= self._fail_after:
            raise ConnectionResetError("client went away")
        chunk = self._data.read(min(len(buffer), 100))
        buffer[: len(chunk)] = chunk
        self.consumed += len(chunk)
        return len(chunk)


# --------------------------------------------------------------------------------------------------
# The contract, on every backend
# --------------------------------------------------------------------------------------------------


def test_store_satisfies_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_put_get_round_trip(store: ObjectStore) -> None:
    info = store.put("observations/2026/11/23/a.jpg", b"\xff\xd8jpeg bytes", content_type="image/jpeg")

    assert (info.key, info.size, info.content_type) == ("observations/2026/11/23/a.jpg", 12, "image/jpeg")
    assert info.etag == hashlib.md5(b"\xff\xd8jpeg bytes").hexdigest()
    assert store.get("observations/2026/11/23/a.jpg") == b"\xff\xd8jpeg bytes"


def test_info_keeps_content_type_size_and_etag(store: ObjectStore) -> None:
    store.put("clips/c.mp4", b"x" * 321, content_type="video/mp4")
    store.put("raw.bin", b"\x00\x01")

    clip = store.info("clips/c.mp4")
    raw = store.info("raw.bin")

    assert (clip.key, clip.size, clip.content_type) == ("clips/c.mp4", 321, "video/mp4")
    assert clip.etag == hashlib.md5(b"x" * 321).hexdigest()
    assert (raw.size, raw.content_type) == (2, "application/octet-stream")


def test_stream_yields_the_same_bytes_in_chunks(make_store: MakeStore) -> None:
    store = make_store(limit=8 * MiB)
    data = bytes(range(256)) * (3 * MiB // 256) + b"tail!"
    store.put("big.bin", data)

    chunks = list(store.stream("big.bin", chunk_size=MiB))

    assert [len(c) for c in chunks] == [MiB, MiB, MiB, 5]
    assert b"".join(chunks) == data


def test_put_from_streams(make_store: MakeStore) -> None:
    store = make_store(limit=8 * MiB)
    data = b"0123456789" * 300_000  # 3 MB

    seekable = store.put("s/seekable", io.BytesIO(data), content_type="image/png")
    one_way = store.put("s/one-way", io.BufferedReader(OneWayStream(data)))

    assert (seekable.size, seekable.content_type) == (len(data), "image/png")
    assert one_way.size == len(data)
    assert store.get("s/seekable") == data
    assert store.get("s/one-way") == data
    assert store.info("s/seekable").content_type == "image/png"


def test_list_by_prefix_in_key_order(store: ObjectStore) -> None:
    for key in ["b/2", "a/2", "a/10", "ab/x", "a/1", "c", "a/sub/deep"]:
        store.put(key, key.encode())

    assert [i.key for i in store.list("a/")] == ["a/1", "a/10", "a/2", "a/sub/deep"]
    assert [i.key for i in store.list("a")] == ["a/1", "a/10", "a/2", "a/sub/deep", "ab/x"]
    assert [i.key for i in store.list("a/1")] == ["a/1", "a/10"]
    assert [i.key for i in store.list()] == ["a/1", "a/10", "a/2", "a/sub/deep", "ab/x", "b/2", "c"]
    assert [(i.key, i.size) for i in store.list("b")] == [("b/2", 3)]
    assert list(store.list("nothing/")) == []


def test_delete_then_get_is_not_found_and_deleting_twice_is_fine(store: ObjectStore) -> None:
    store.put("gone.txt", b"bye", content_type="text/plain")

    store.delete("gone.txt")
    store.delete("gone.txt")
    store.delete("never/was.txt")

    with pytest.raises(NotFound, match=r"gone\.txt"):
        store.get("gone.txt")
    assert store.exists("gone.txt") is False
    assert list(store.list()) == []


def test_delete_many_removes_the_listed_objects_in_batches(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keeneye.store import s3_objects

    monkeypatch.setattr(s3_objects, "DELETE_BATCH", 2)  # S3: three DeleteObjects requests
    for name in ("a", "b", "c", "d", "keep"):
        store.put(f"dir/{name}", name.encode())
    store.delete_many(["dir/a", "dir/b", "dir/c", "dir/d", "dir/never-written", "dir/a"])
    assert [o.key for o in store.list("dir/")] == ["dir/keep"]
    store.delete_many([])  # nothing to do
    with pytest.raises(InvalidInput):
        store.delete_many(["dir/keep", "../escape"])  # every key is checked before any is deleted
    assert store.exists("dir/keep")


def test_missing_key_raises_not_found_everywhere(store: ObjectStore) -> None:
    store.put("present", b"1")
    with pytest.raises(NotFound):
        store.get("absent")
    with pytest.raises(NotFound):
        store.info("absent")
    with pytest.raises(NotFound):
        store.stream("absent")  # at the call, not at the first next()


def test_exists(store: ObjectStore) -> None:
    store.put("dir/here", b"1")

    assert store.exists("dir/here") is True
    assert store.exists("dir/there") is False
    assert store.exists("dir") is False  # a folder is not an object


def test_overwrite_replaces_bytes_and_content_type(store: ObjectStore) -> None:
    store.put("k", b"one", content_type="text/plain")
    store.put("k", b"two!", content_type="image/png")

    assert store.get("k") == b"two!"
    info = store.info("k")
    assert (info.size, info.content_type) == (4, "image/png")
    assert [i.key for i in store.list()] == ["k"]


def test_size_limit_is_inclusive(store: ObjectStore) -> None:
    assert store.put("exact", b"x" * LIMIT).size == LIMIT
    assert store.put("exact-stream", io.BufferedReader(OneWayStream(b"y" * LIMIT))).size == LIMIT


def test_put_many_stores_every_object_like_put(store: ObjectStore) -> None:
    objects = [
        NewObject(f"observations/p/{i:02d}.jpg", bytes([i]) * (10 + i), "image/jpeg") for i in range(12)
    ] + [NewObject("other/dir/x.bin", b"\x00\x01")]
    infos = store.put_many(objects)
    assert [i.key for i in infos] == [o.key for o in objects]
    for obj, info in zip(objects, infos, strict=True):
        assert store.get(obj.key) == obj.data
        assert info.size == len(obj.data) and info.etag == hashlib.md5(obj.data).hexdigest()
        stored = store.info(obj.key)
        assert (stored.size, stored.content_type, stored.etag) == (len(obj.data), obj.content_type, info.etag)
    assert store.info("other/dir/x.bin").content_type == "application/octet-stream"
    assert store.put_many([]) == []


def test_put_many_refuses_an_object_over_the_limit_by_name(store: ObjectStore) -> None:
    with pytest.raises(MessageTooLarge) as exc:
        store.put_many([NewObject("small", b"ok"), NewObject("big", b"x" * (LIMIT + 1))])
    assert "big" in str(exc.value)
    assert not store.exists("big")
    assert [i.key for i in store.list()] in ([], ["small"])  # nothing half-written; "small" whole if there


@pytest.mark.parametrize(
    ("make_data", "reported_size"),
    [
        (lambda: b"x" * (LIMIT + 1), LIMIT + 1),
        (lambda: io.BytesIO(b"x" * 5000), 5000),  # seekable: its size is known before reading
        (lambda: io.BufferedReader(OneWayStream(b"x" * 5000)), LIMIT + 1),  # one-way: read limit+1, stop
    ],
    ids=["bytes", "seekable-stream", "one-way-stream"],
)
def test_oversized_object_is_refused_and_leaves_nothing(
    store: ObjectStore, make_data: Callable[[], bytes | io.IOBase], reported_size: int
) -> None:
    with pytest.raises(MessageTooLarge) as caught:
        store.put("huge.bin", make_data())  # type: ignore[arg-type]

    assert (caught.value.size, caught.value.limit) == (reported_size, LIMIT)
    assert caught.value.setting == "KEENEYE_OBJECTS__MAX_OBJECT_BYTES"
    assert "object huge.bin" in caught.value.message
    assert list(store.list()) == []
    assert store.exists("huge.bin") is False


def test_one_way_stream_is_not_read_past_the_limit(store: ObjectStore) -> None:
    source = OneWayStream(b"x" * 50_000)

    with pytest.raises(MessageTooLarge):
        store.put("huge.bin", source)  # type: ignore[arg-type]

    assert source.consumed == LIMIT + 1


def test_failed_or_oversized_write_keeps_the_old_object(store: ObjectStore) -> None:
    store.put("k", b"old", content_type="text/plain")

    with pytest.raises(ConnectionResetError):
        store.put("k", io.BufferedReader(OneWayStream(b"n" * 900, fail_after=300)))
    with pytest.raises(MessageTooLarge):
        store.put("k", b"n" * (LIMIT + 1))

    assert store.get("k") == b"old"
    assert [(i.key, i.size) for i in store.list()] == [("k", 3)]


BAD_KEYS = [
    "../x",
    "/abs",
    "a/../../b",
    "",
    "a\\b",
    "a//b",
    "a/./b",
    "a/",
    "nul\x00byte",
    "new\nline",
    ".keeneye-meta/x",
    "a/.keeneye-tmp-1",
    "x" * 241,
    "a/" * 600,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    for attempt in (
        lambda: store.put(key, b"1"),
        lambda: store.get(key),
        lambda: store.info(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.uri(key),
        lambda: store.stream(key),
    ):
        with pytest.raises(InvalidInput) as caught:
            attempt()
        assert caught.value.reason == "bad_key"
    assert list(store.list()) == []


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../..", "a\\b"])
def test_bad_list_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        list(store.list(prefix))
    assert caught.value.reason == "bad_key"


def test_longest_keys_are_accepted(store: ObjectStore) -> None:
    folders = "/".join(["d" * 200] * 3)  # 603 bytes
    key = f"{folders}/{'n' * 240}"

    store.put(key, b"1", content_type="text/plain")

    assert store.get(key) == b"1"
    assert store.info(key).content_type == "text/plain"
    assert [i.key for i in store.list()] == [key]


def test_similar_keys_do_not_clash(store: ObjectStore) -> None:
    store.put("a", b"1", content_type="text/plain")
    store.put("a.json/x", b"2", content_type="image/png")

    assert (store.info("a").content_type, store.info("a.json/x").content_type) == ("text/plain", "image/png")
    assert [i.key for i in store.list()] == ["a", "a.json/x"]


def test_unicode_keys_round_trip(store: ObjectStore) -> None:
    store.put("fälle/größe 1.jpg", b"1")
    assert store.get("fälle/größe 1.jpg") == b"1"
    assert [i.key for i in store.list("fälle/")] == ["fälle/größe 1.jpg"]


def test_check_reports_reachable(store: ObjectStore) -> None:
    health = store.check()

    assert health.reachable is True
    assert health.setting == "KEENEYE_OBJECTS_URL"
    assert health.version in {"local", "s3"}
    assert health.fix == ""


# --------------------------------------------------------------------------------------------------
# Opening by URL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/dir",
        "no-scheme-at-all",
        "file://relative/dir",
        "file:",
        "s3://Bad_Bucket/x",
        "s3://ab",
        "s3://bucket:notaport/x",
        "s3://192.168.0.1/x",
        "s3://a..b/x",
        "s3://bucket/../x",
        "http://[::1",
    ],
)
def test_unusable_urls_raise_config_error_naming_the_setting(tmp_path: Path, url: str) -> None:
    settings = Settings(home=tmp_path, objects_url=url)
    with pytest.raises(ConfigError) as caught:
        open_object_store(settings)
    assert caught.value.setting == "KEENEYE_OBJECTS_URL"
    assert caught.value.message.startswith("KEENEYE_OBJECTS_URL: ")


def test_default_settings_open_a_file_store_under_home(settings: Settings) -> None:
    store = open_object_store(settings)

    store.put("a/b.txt", b"hi")

    assert (settings.home / "objects").is_dir()
    assert store.uri("a/b.txt") == (settings.home / "objects" / "a" / "b.txt").as_uri()
    assert (settings.home / "objects" / "a" / "b.txt").read_bytes() == b"hi"


# --------------------------------------------------------------------------------------------------
# File store details
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[ObjectStore]:
    yield open_object_store(Settings(home=tmp_path, objects_url=(tmp_path / "o b j").as_uri()))


def test_file_store_percent_encoded_path_and_bookkeeping_hidden(
    file_store: ObjectStore, tmp_path: Path
) -> None:
    root = tmp_path / "o b j"
    file_store.put("x/y.png", b"png", content_type="image/png")
    (root / "x" / ".keeneye-tmp-leftover").write_bytes(b"crash debris")

    assert (root / "x" / "y.png").read_bytes() == b"png"
    assert [i.key for i in file_store.list()] == ["x/y.png"]
    assert sorted(p.name for p in (root / "x").iterdir()) == [".keeneye-tmp-leftover", "y.png"]


def test_file_store_key_and_folder_clash_is_refused(file_store: ObjectStore) -> None:
    file_store.put("a", b"file")
    file_store.put("b/c", b"file in folder")

    for key in ("a/b", "b"):
        with pytest.raises(InvalidInput) as caught:
            file_store.put(key, b"x")
        assert (caught.value.reason, caught.value.status) == ("bad_key", 409)
    assert [i.key for i in file_store.list()] == ["a", "b/c"]
    assert file_store.exists("b") is False


def test_file_store_uncreatable_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        open_object_store(Settings(home=tmp_path, objects_url=(tmp_path / "file" / "sub").as_uri()))
    assert caught.value.setting == "KEENEYE_OBJECTS_URL"


def test_file_store_check_reports_unwritable(file_store: ObjectStore, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(tmp_path / "o b j")
    (tmp_path / "o b j").write_bytes(b"now a file")

    health = file_store.check()

    assert health.reachable is False
    assert "KEENEYE_OBJECTS_URL" in health.fix


# --------------------------------------------------------------------------------------------------
# S3 details
# --------------------------------------------------------------------------------------------------


def test_s3_check_against_closed_port_answers_fast(tmp_path: Path) -> None:
    pytest.importorskip("boto3")
    url = f"http://127.0.0.1:{free_port()}"
    store = open_object_store(s3_settings(tmp_path, url, "s3://keeneye-nowhere"))

    started = time.monotonic()
    health = store.check()
    elapsed = time.monotonic() - started

    assert health.reachable is False
    assert elapsed < 5
    assert "KEENEYE_S3__ENDPOINT_URL" in health.fix
    assert "not reachable" in health.detail


def test_s3_write_against_closed_port_raises_backend_unavailable(tmp_path: Path) -> None:
    pytest.importorskip("boto3")
    store = open_object_store(
        s3_settings(tmp_path, f"http://127.0.0.1:{free_port()}", "s3://keeneye-nowhere")
    )

    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        store.put("k", b"1")

    assert time.monotonic() - started < 10
    assert caught.value.setting == "KEENEYE_OBJECTS_URL"
    assert "KEENEYE_S3__ENDPOINT_URL" in (caught.value.fix or "")


@pytest.mark.parametrize(
    ("code", "key", "expected", "fix_mentions"),
    [
        ("NoSuchKey", "k", NotFound, None),
        ("404", "k", NotFound, None),
        ("InvalidAccessKeyId", None, BackendUnavailable, "KEENEYE_S3__ACCESS_KEY_ID"),
        ("SignatureDoesNotMatch", "k", BackendUnavailable, "KEENEYE_S3__SECRET_ACCESS_KEY"),
        ("AccessDenied", "k", BackendUnavailable, "KEENEYE_S3__ACCESS_KEY_ID"),
        ("403", "k", BackendUnavailable, "KEENEYE_S3__ACCESS_KEY_ID"),
        ("NoSuchBucket", None, BackendUnavailable, "KEENEYE_S3__CREATE_BUCKET"),
        ("InternalError", "k", BackendUnavailable, None),
    ],
)
def test_s3_error_mapping(
    code: str, key: str | None, expected: type[Exception], fix_mentions: str | None
) -> None:
    pytest.importorskip("boto3")
    from botocore.exceptions import ClientError

    from keeneye.store.s3_objects import map_s3_error

    err = map_s3_error(
        ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject"), url="s3://b/p/", key=key
    )

    assert type(err) is expected
    if fix_mentions is not None:
        assert fix_mentions in (err.fix or "")


def test_s3_error_mapping_of_connection_and_credential_errors() -> None:
    pytest.importorskip("boto3")
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from keeneye.store.s3_objects import map_s3_error

    down = map_s3_error(EndpointConnectionError(endpoint_url="http://x"), url="s3://b/")
    anonymous = map_s3_error(NoCredentialsError(), url="s3://b/")

    assert isinstance(down, BackendUnavailable) and "KEENEYE_S3__ENDPOINT_URL" in (down.fix or "")
    assert isinstance(anonymous, BackendUnavailable) and "KEENEYE_S3__ACCESS_KEY_ID" in (anonymous.fix or "")


@pytest.mark.integration
def test_s3_bucket_that_does_not_exist_yet_reads_empty_then_is_created(
    tmp_path: Path, s3_server: object
) -> None:
    bucket = f"keeneye-test-{uuid4().hex[:8]}"
    store = open_object_store(s3_settings(tmp_path, s3_server.endpoint_url, f"s3://{bucket}/p"))  # type: ignore[attr-defined]

    assert store.check().detail == "bucket will be created on first write"
    assert store.exists("k") is False
    assert list(store.list()) == []
    with pytest.raises(NotFound):
        store.get("k")

    store.put("k", b"1")

    assert store.uri("k") == f"s3://{bucket}/p/k"
    assert store.check().detail == f"bucket {bucket}"


@pytest.mark.integration
def test_s3_missing_bucket_without_create_is_reported(tmp_path: Path, s3_server: object) -> None:
    bucket = f"keeneye-test-{uuid4().hex[:8]}"
    settings = s3_settings(tmp_path, s3_server.endpoint_url, f"s3://{bucket}", create_bucket=False)  # type: ignore[attr-defined]
    store = open_object_store(settings)

    health = store.check()
    with pytest.raises(BackendUnavailable) as caught:
        store.put("k", b"1")

    assert health.reachable is False
    assert "KEENEYE_S3__CREATE_BUCKET" in health.fix
    assert "KEENEYE_S3__CREATE_BUCKET" in (caught.value.fix or "")


@pytest.mark.integration
def test_s3_multipart_stream_upload(tmp_path: Path, s3_server: object) -> None:
    bucket = f"keeneye-test-{uuid4().hex[:8]}"
    store = open_object_store(s3_settings(tmp_path, s3_server.endpoint_url, f"s3://{bucket}", limit=20 * MiB))  # type: ignore[attr-defined]
    data = b"abcdefgh" * (9 * MiB // 8)  # over boto3's 8 MiB multipart threshold and the in-memory spool

    info = store.put("video/clip.mp4", io.BufferedReader(OneWayStream(data)), content_type="video/mp4")

    assert (info.size, info.content_type) == (len(data), "video/mp4")
    assert info.etag.endswith("-2")  # two parts
    assert b"".join(store.stream("video/clip.mp4")) == data
