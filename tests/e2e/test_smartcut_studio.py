"""The smartcut studio (/smartcut) in headless Chromium against a live server and a real `motion`
plugin process on the embedded bus, on a generated 2-minute H.264 video with moving objects.

1. one user: the browser samples a local file (frames, chunks, segments appear, JSON export), then a
   server-held copy: drag an end, delete one, add one, save, cut, download the zip — each clip lasts
   its edited segment to within one keyframe interval;
2. two users at once each see only their own requests and edits, and a third is told why (429) and
   when to retry;
3. logged in with a non-admin key, the user is the key's name (the field read-only) and the API
   refuses a request in another user's name (403 ``other_user``).

Screenshots of every step go to /tmp/shots/h7/.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keeneye.domain import Role
from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.stream.bus import open_bus
from keeneye.video import GroundTruth, SynthSpec, generate_video
from keeneye.video.probe import probe
from tests.e2e.test_web import ARGS, CHROMIUM, wait_until
from tests.services import unavailable
from tests.serving_support import LiveServer, live_server
from tests.unit.video.bus_support import plugin_thread

pytestmark = pytest.mark.e2e

SHOTS = Path("/tmp/shots/h7")
GOP = 2.0  # seconds between keyframes of the generated video


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """2 minutes, 5 fps, 320×180, H.264 with a keyframe every 2 s, 3 objects walking through."""
    spec = SynthSpec(
        hours=2 / 60,
        events=3,
        seed=11,
        gop_seconds=GOP,
        min_event_seconds=5,
        max_event_seconds=8,
        name="yard",
    )
    return generate_video(tmp_path_factory.mktemp("studio"), spec)


@pytest.fixture
def studio(settings: Settings, clip_video: tuple[Path, GroundTruth]) -> Iterator[LiveServer]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    settings.smartcut.allowed_roots = [clip_video[0].parent]
    settings.smartcut.max_active_users = 3
    assert settings.smartcut.root is not None
    bus = open_bus(settings)
    try:
        with plugin_thread(bus, settings.smartcut.root), live_server(settings) as server:
            yield server
    finally:
        bus.close()


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _segments(page: Any) -> list[dict[str, float]]:
    segments: list[dict[str, float]] = page.evaluate("window.smartcutStudio.segments()")
    return segments


def _start(page: Any, source: str, *, video: Path) -> None:
    page.check(f"input[name=source][value={source}]")
    if source == "path":
        page.fill("#path", str(video))
    else:
        page.set_input_files("#file", str(video))
    page.select_option("#plugin", "motion")
    page.fill("#sensitivity", "1")
    page.click("#start-button")


def _wait_editor(page: Any, previous: str | None = None) -> str:
    wait_until(
        page,
        "(prev) => window.smartcutStudio.uid() && window.smartcutStudio.uid() !== prev"
        " && !document.getElementById('editor').hidden",
        arg=previous,
        timeout=60_000,
    )
    page.wait_for_selector("#timeline .vis-item.vis-range")
    uid: str = page.evaluate("window.smartcutStudio.uid()")
    return uid


def _x_of(page: Any, seconds: float, duration: float) -> float:
    box = page.locator("#timeline .vis-panel.vis-center").bounding_box()
    return float(box["x"] + seconds / duration * box["width"])


def _is_keyframe(t: float) -> bool:
    return abs(t / GOP - round(t / GOP)) < 1e-3


def _browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def test_sample_edit_save_cut_download(
    studio: LiveServer, clip_video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    video = clip_video[0]
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            outside: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url) if not r.url.startswith((studio.url, "blob:", "data:")) else None
                ),
            )
            page.goto(f"{studio.url}/smartcut?user=alice")
            page.wait_for_selector("#plugin option[value=motion]", state="attached")
            _shot(page, "01_start")

            # 1. a local file, sampled by the browser: 120 frames at 1 s in 3 chunks
            _start(page, "local", video=video)
            wait_until(page, "document.getElementById('p-frames').textContent !== '0'")
            _shot(page, "02_sampling")
            local_uid = _wait_editor(page)
            assert page.text_content("#p-frames") == "120"
            assert page.text_content("#p-sent") == "3"
            assert page.text_content("#p-processed") == "3"
            local = _segments(page)
            assert local, "the recommender found no segment in a video with 3 objects"
            assert "browser holds this video" in page.text_content("#cut-note")
            assert page.is_disabled("#b-cut")
            page.wait_for_selector("#activity canvas")
            _shot(page, "03_local_segments")
            with page.expect_download() as got:
                page.click("#x-json")
            exported = json.loads(Path(got.value.path()).read_text())
            assert exported["user_request_uid"] == local_uid and exported["timestamps"] == local

            # 2. the same video held by the server: edit, save, cut
            _start(page, "path", video=video)
            uid = _wait_editor(page, local_uid)
            before = _segments(page)
            assert before == local  # the same frames, the same recommender, the same segments
            assert len(before) >= 2, before
            page.wait_for_selector("#activity canvas")
            _shot(page, "04_server_segments")

            # drag the first segment's end 8 s later: it snaps to a keyframe
            first = page.locator("#timeline .vis-item.vis-range").first
            first.click()
            handle = page.locator("#timeline .vis-item.vis-selected .vis-drag-right")
            box = handle.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + 20, y, steps=4)
            page.mouse.move(_x_of(page, before[0]["stop"] + 8, 120.0), y, steps=6)
            page.mouse.up()
            dragged = _segments(page)
            assert dragged[0]["start"] == before[0]["start"]
            assert before[0]["stop"] + 6 <= dragged[0]["stop"] <= before[0]["stop"] + 10
            assert _is_keyframe(dragged[0]["stop"]), dragged[0]
            _shot(page, "05_dragged_end")

            # delete the last segment (click, Delete key)
            page.locator("#timeline .vis-item.vis-range").last.click()
            page.keyboard.press("Delete")
            deleted = _segments(page)
            assert deleted == dragged[:-1]
            _shot(page, "06_deleted")

            # add one where the deleted one started: click the timeline there, then Add
            at = dragged[-1]["start"] + 1
            page.mouse.click(_x_of(page, at, 120.0), y + 40)
            page.click("#b-add")
            added = _segments(page)
            assert len(added) == len(deleted) + 1
            new = next(s for s in added if s not in deleted)
            assert abs(new["start"] - at) <= GOP / 2 + 1e-6 and _is_keyframe(new["start"])
            assert new["stop"] - new["start"] == pytest.approx(min(15.0, 120.0 - new["start"]))
            _shot(page, "07_added")

            # undo and redo by hand: Ctrl+Z removes the added segment, Add puts it back
            page.keyboard.press("Control+z")
            assert _segments(page) == deleted
            page.click("#b-add")
            assert _segments(page) == added
            # split at the cursor (S) makes two, undo joins them again; zoom narrows the window
            page.keyboard.press("s")
            assert len(_segments(page)) == len(added) + 1
            page.keyboard.press("Control+z")
            assert _segments(page) == added
            page.click("#b-zin")
            start, end = page.evaluate("window.smartcutStudio.window()")
            assert end - start < 100
            page.click("#b-fit")

            page.click("#b-save")
            page.wait_for_selector("#e-status.ok")
            assert "Saved" in page.text_content("#e-status")
            saved = page.evaluate(
                "async (uid) => (await fetch(`/v1/smartcut/requests/${uid}/edits?user_id=alice`)).json()",
                uid,
            )
            assert saved["edited"] is True and saved["timestamps"] == added
            _shot(page, "08_saved")

            with page.expect_download() as got:
                page.click("#b-cut")
            archive = tmp_path / got.value.suggested_filename
            got.value.save_as(archive)
            page.wait_for_selector("#cut-status.ok")
            _shot(page, "09_cut")
            page.fill("#per-segment", "4")
            with page.expect_download() as got:
                page.click("#b-frames")
            with zipfile.ZipFile(got.value.path()) as zf:
                coco = json.loads(zf.read("annotations.json"))
            assert len(coco["images"]) == 4 * len(added) and coco["annotations"] == []
            assert not errors, errors
            assert not outside, outside
        finally:
            browser.close()

    out = tmp_path / "clips"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(out)
    manifest = json.loads((out / "clips.json").read_text())["clips"]
    assert [{"start": c["start"], "stop": c["stop"]} for c in manifest] == added
    for clip, segment in zip(manifest, added, strict=True):
        info = probe(out / clip["file"])
        assert info.codec == "h264"
        assert abs(info.duration - (segment["stop"] - segment["start"])) <= GOP, (clip, info.duration)


def test_two_users_each_see_their_own_and_a_third_is_told_to_wait(
    studio: LiveServer, clip_video: tuple[Path, GroundTruth]
) -> None:
    from playwright.sync_api import sync_playwright

    video = clip_video[0]
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            pages = {}
            for name in ("alice", "bob"):
                page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
                page.goto(f"{studio.url}/smartcut?user={name}")
                page.wait_for_selector("#plugin option[value=motion]", state="attached")
                pages[name] = page
            for page in pages.values():  # both start before either finishes
                _start(page, "path", video=video)
            uids = {name: _wait_editor(page) for name, page in pages.items()}
            assert uids["alice"] != uids["bob"]

            alice, bob = pages["alice"], pages["bob"]
            original = _segments(alice)
            assert _segments(bob) == original
            alice.locator("#timeline .vis-item.vis-range").first.click()
            alice.keyboard.press("Delete")
            alice.keyboard.press("Control+s")
            alice.wait_for_selector("#e-status.ok")
            bob.mouse.click(_x_of(bob, 1.0, 120.0), bob.locator("#timeline").bounding_box()["y"] + 90)
            bob.keyboard.press("a")
            bob.click("#b-save")
            bob.wait_for_selector("#e-status.ok")

            for name, page in pages.items():  # a fresh look: the list and the edits are the user's own
                page.reload()
                page.wait_for_selector(f"#requests tr[data-uid='{uids[name]}']")
                rows = page.locator("#requests tbody tr").evaluate_all("rs => rs.map(r => r.dataset.uid)")
                assert rows == [uids[name]], (name, rows)
                _shot(page, f"10_{name}_list")
                page.click(f"#requests tr[data-uid='{uids[name]}'] button")
                wait_until(page, "(u) => window.smartcutStudio.uid() === u", arg=uids[name])
                page.wait_for_selector("#timeline .vis-item.vis-range")
                page.wait_for_selector("#activity canvas")
                _shot(page, f"11_{name}_edits")
            assert _segments(alice) == original[1:]
            assert len(_segments(bob)) == len(original) + 1 and _segments(bob)[0]["start"] == 0.0
            peek = bob.evaluate(
                "async (uid) => (await fetch(`/v1/smartcut/requests/${uid}/edits?user_id=bob`)).status",
                uids["alice"],
            )
            assert peek == 404  # another user's request is as unknown as a missing one

            # three users hold requests in flight (client uploads that never complete); a fourth is refused
            for name in ("alice", "bob", "carol"):
                made = alice.evaluate(
                    """async (user) => {
                        const f = new FormData();
                        const fields = {user_id: user, plugin: "motion", sensitivity: "1",
                                        video_name: "held.mp4"};
                        for (const [k, v] of Object.entries(fields)) f.append(k, v);
                        return (await fetch('/v1/smartcut/requests', {method: 'POST', body: f})).status;
                    }""",
                    name,
                )
                assert made == 201
            dave = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            dave.goto(f"{studio.url}/smartcut?user=dave")
            dave.wait_for_selector("#plugin option[value=motion]", state="attached")
            _start(dave, "path", video=video)
            dave.wait_for_selector("#start-status.error")
            told = dave.text_content("#start-status")
            assert "too_many_users" in told and "Try again in 30 s" in told, told
            _shot(dave, "12_limit")
        finally:
            browser.close()


def test_a_non_admin_key_is_its_own_user_and_cannot_act_for_another(
    settings: Settings, clip_video: tuple[Path, GroundTruth]
) -> None:
    """Logged in with an operator's key named ``carol``: the page's user is ``carol`` whatever the URL
    says, the field is read-only, and the API refuses her a request in another user's name (403)."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"require_api_key": True})}
    )
    settings.smartcut.allowed_roots = [clip_video[0].parent]
    db = open_results_db(settings)
    db.ensure_schema()
    key = db.create_api_key("carol", Role.operator)[1]
    with live_server(settings, poll_aliases=False) as server, sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/login?next=%2Fsmartcut")
            page.fill("#key", key)
            page.click("#login button[type=submit]")
            page.wait_for_url("**/smartcut")
            page.goto(f"{server.url}/smartcut?user=mallory")  # a user named in the URL is ignored
            assert page.input_value("#user") == "carol"
            assert page.get_attribute("#user", "readonly") is not None
            assert "API key" in (page.get_attribute("#user", "title") or "")
            own, other = page.evaluate(
                """async () => [
                    (await keeneyeFetch('/v1/smartcut/requests?user_id=carol')).status,
                    await (await keeneyeFetch('/v1/smartcut/requests?user_id=mallory')).json(),
                ]"""
            )
            assert own == 200
            assert other["reason"] == "other_user", other
            wait_until(page, "() => !document.querySelector('#plugin').textContent.includes('loading')")
            assert "none running" in page.text_content("#plugin")  # no recommender was started here
            _shot(page, "12_bound_user")
        finally:
            browser.close()
