"""smartcut benchmark: a day of 720p H.264 surveillance video, ``motion`` at 1 s against DVR-Scan.

    .venv/bin/python benchmarks/smartcut.py [--hours 24] [--fps 2] [--events-per-hour 10] [--json out.json]

One run measures, on the same video and ground truth:

1. **keeneye ``motion``** at ``--sensitivity`` (1 s): the whole in-process path of ``keeneye smartcut
   run`` (probe, sampling, JPEG chunks of 50, scoring, segments) — wall time, TPR, FPR, events found;
2. **the keyframe-decode limit**: demuxing the file and decoding only its keyframes, nothing else —
   the least any sampler that decodes pictures pays on this file (the floor under item 1);
3. **DVR-Scan** (PyPI ``dvr-scan``, defaults, ``--scan-only``) in its own virtualenv under
   ``~/.cache/keeneye-bench/venvs/dvrscan`` (created with pip on first use; ``--no-dvrscan`` skips it):
   wall time, TPR, FPR of its events as they are, and after the seed's rule that a segment lasts at
   least 15 s (keeneye's shared post-processing: merge gaps < 10 s, pad 2 s, ≥ 15 s).

The video is made once with keeneye's synthesiser (``keeneye synth smartcut``: sensor noise, slow
lighting drift, camera shake, objects walking in) at 1280×720, ``--fps`` frames a second (2 by default:
the seed fixes no frame rate, and a 1 s sensitivity needs one frame a second; a low rate keeps making
a day of video to half an hour on 2 cores), a keyframe every ``--gop`` seconds (1 by default, a common
recorder setting), libx264 CRF ``--crf`` (35: about 1 Mbit/s, 11 GB a day — what a 720p camera
records; the synthesiser's default 23 keeps the sensor noise and would make 57 GB), and cached
under ``~/.cache/keeneye-bench/smartcut/``. ``--hours`` makes a shorter video on a busy machine; the
table then also shows the time projected to 24 h (linear: every stage is a pass over the file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from keeneye.video import (  # noqa: E402
    GroundTruth,
    Segment,
    SmartcutRequest,
    SynthSpec,
    evaluate,
    generate_video,
    probe,
    run_local,
)
from keeneye.video.segments import SegmentPolicy, enforce_min_length, merge, pad  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keeneye-bench"
DVRSCAN_PACKAGES = ["dvr-scan"]
DAY = 24 * 3600.0


@dataclass
class Row:
    name: str
    seconds: float
    cpu: float  # user + system seconds of every thread (and child process) it used
    tpr: float | None = None
    fpr: float | None = None
    found: str = ""
    segments: int | None = None
    note: str = ""


# ------------------------------------------------------------------------------------------- the video


def cached_video(
    hours: float, fps: int, gop: float, events_per_hour: float, seed: int, crf: int
) -> tuple[Path, GroundTruth]:
    """The synthetic 720p video and its ground truth, generated once per parameter set."""
    name = f"{hours:g}h-720p-{fps}fps-gop{gop:g}-crf{crf}-e{events_per_hour:g}-s{seed}"
    folder = CACHE / "smartcut" / name
    video, truth = folder / "smartcut.mp4", folder / "smartcut.events.json"
    if video.exists() and truth.exists():
        return video, GroundTruth.load(truth)
    spec = SynthSpec(
        hours=hours,
        events=max(1, round(events_per_hour * hours)),
        seed=seed,
        fps=fps,
        width=1280,
        height=720,
        gop_seconds=gop,
        crf=crf,
    )
    tmp = folder.with_name(name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"generating a {hours:g} h 1280×720 video at {fps} fps into {folder} (once) …", flush=True)
    started = time.perf_counter()
    last = [0.0]

    def progress(done: float) -> None:
        if done - last[0] >= 0.05 or done >= 1.0:
            last[0] = done
            print(f"  {done:5.0%}  {time.perf_counter() - started:7.0f} s", flush=True)

    generate_video(tmp, spec, progress)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"  made in {time.perf_counter() - started:.0f} s, {video.stat().st_size / 1e6:.0f} MB", flush=True)
    return video, GroundTruth.load(truth)


# -------------------------------------------------------------------------------------------- keeneye


def keyframe_decode_limit(video: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds to demux ``video`` and decode its keyframes only (nothing else)."""
    started, cpu = time.perf_counter(), time.process_time()
    decoded = 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = "NONKEY"
        for packet in container.demux(stream):
            if not packet.is_keyframe:
                continue
            decoded += len(packet.decode())
    return time.perf_counter() - started, time.process_time() - cpu, decoded


def run_motion(video: Path, truth: GroundTruth, sensitivity: float) -> tuple[Row, dict[str, Any]]:
    cpu = time.process_time()
    with tempfile.TemporaryDirectory(prefix="keeneye-bench-") as root:
        result = run_local(SmartcutRequest(video, "motion", sensitivity), Path(root))
    cpu = time.process_time() - cpu
    ev = evaluate(result.recommendation.segments, truth.events, result.info.duration)
    row = Row(
        f"keeneye motion, {sensitivity:g} s",
        result.seconds,
        cpu,
        ev.tpr,
        ev.fpr,
        f"{ev.n_events_found}/{ev.n_events}",
        ev.n_segments,
        f"{result.n_frames} frames, {'keyframes only' if result.keyframes_only else 'seek + decode'}",
    )
    return row, {
        "frames": result.n_frames,
        "chunks": result.n_chunks,
        "keyframes_only": result.keyframes_only,
    }


# ------------------------------------------------------------------------------------------- DVR-Scan


def dvrscan_python() -> Path | None:
    """DVR-Scan's virtualenv interpreter, created on first use; None (reason printed) if pip fails."""
    venv = CACHE / "venvs" / "dvrscan"
    python = venv / "bin" / "python"
    stamp = venv / ".ready"
    if stamp.exists():
        return python
    print(f"creating the DVR-Scan virtualenv in {venv} (once) …", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *DVRSCAN_PACKAGES], check=True)
    except subprocess.CalledProcessError as exc:
        print(f"  DVR-Scan skipped: pip failed ({exc})")
        return None
    stamp.touch()
    return python


def parse_timecode(text: str) -> float:
    """``HH:MM:SS.mmm`` → seconds."""
    h, m, s = text.strip().split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def dvrscan_events(output: str) -> list[Segment]:
    """``--quiet`` prints one comma-separated line: start,end,start,end,… timecodes (none: no line)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip().count(":") >= 2]
    if not lines:
        return []
    codes = [parse_timecode(c) for c in lines[-1].split(",") if c.strip()]
    return [Segment(a, b) for a, b in zip(codes[::2], codes[1::2], strict=True)]


def run_dvrscan(python: Path, video: Path, truth: GroundTruth, duration: float) -> list[Row]:
    exe = python.parent / "dvr-scan"
    command = [str(exe), "-i", str(video), "--scan-only", "--quiet", "--ignore-user-config"]
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(f"DVR-Scan failed ({done.returncode}): {done.stderr[-2000:]}")
        return []
    events = dvrscan_events(done.stdout)
    raw = evaluate(events, truth.events, duration)
    policy = SegmentPolicy(high=1.0, low=0.5)  # only its merge / pad / minimum length are used
    padded = pad(merge(events, policy.merge_gap), policy.pad_before, policy.pad_after, duration)
    seed = merge(enforce_min_length(padded, policy.min_length, duration))  # as to_segments, steps 2–5
    seeded = evaluate(seed, truth.events, duration)
    return [
        Row(
            "DVR-Scan 1.8 (defaults)",
            seconds,
            cpu,
            raw.tpr,
            raw.fpr,
            f"{raw.n_events_found}/{raw.n_events}",
            raw.n_segments,
            "every frame, MOG2",
        ),
        Row(
            "DVR-Scan, segments ≥ 15 s",
            seconds,
            cpu,
            seeded.tpr,
            seeded.fpr,
            f"{seeded.n_events_found}/{seeded.n_events}",
            seeded.n_segments,
            "its events through keeneye's merge / pad / min length",
        ),
    ]


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=24.0, help="video length (default 24)")
    parser.add_argument("--fps", type=int, default=2, help="frames per second of the video (default 2)")
    parser.add_argument("--gop", type=float, default=1.0, help="seconds between keyframes (default 1)")
    parser.add_argument("--crf", type=int, default=35, help="libx264 CRF (35: about 1 Mbit/s, 11 GB a day)")
    parser.add_argument("--events-per-hour", type=float, default=10.0, help="ground-truth events per hour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sensitivity", type=float, default=1.0, help="seconds between sampled frames")
    parser.add_argument("--no-dvrscan", action="store_true", help="skip DVR-Scan")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    video, truth = cached_video(args.hours, args.fps, args.gop, args.events_per_hour, args.seed, args.crf)
    info = probe(video)
    print(
        f"video: {video} · {info.duration / 3600:.2f} h · {info.width}×{info.height} · {info.fps:g} fps · "
        f"{info.codec} · {video.stat().st_size / 1e6:.0f} MB · {len(truth.events)} events, "
        f"{sum(e.length for e in truth.events):.0f} event seconds · cpus {os.cpu_count()} · "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: list[Row] = []
    limit, limit_cpu, keyframes = keyframe_decode_limit(video)
    rows.append(
        Row("keyframe-decode limit", limit, limit_cpu, note=f"{keyframes} keyframes decoded, nothing else")
    )
    print(f"keyframe-decode limit: {limit:.1f} s", flush=True)
    motion, extra = run_motion(video, truth, args.sensitivity)
    rows.append(motion)
    print(f"motion: {motion.seconds:.1f} s", flush=True)
    python = None if args.no_dvrscan else dvrscan_python()
    if python is not None:
        rows += run_dvrscan(python, video, truth, info.duration)

    scale = DAY / info.duration
    columns = ("wall s", "CPU s", "→ 24 h")
    header = f"{'':28} " + " ".join(f"{c:>8}" for c in columns)
    header += f" {'TPR':>6} {'FPR':>6} {'events':>8} {'segs':>5}  note"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        tpr = "" if r.tpr is None else f"{r.tpr:.3f}"
        fpr = "" if r.fpr is None else f"{r.fpr:.3f}"
        segs = "" if r.segments is None else str(r.segments)
        print(
            f"{r.name:28} {r.seconds:8.1f} {r.cpu:8.1f} {r.seconds * scale / 60:7.1f}m "
            f"{tpr:>6} {fpr:>6} {r.found:>8} {segs:>5}  {r.note}"
        )
    print(
        f"\nmotion / keyframe-decode limit: {motion.seconds / limit:.2f}× wall, "
        f"{motion.cpu / limit_cpu:.2f}× CPU · '→ 24 h': the wall time scaled to a day · "
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "video": {"path": str(video), "hours": info.duration / 3600, "fps": info.fps,
                              "width": info.width, "height": info.height, "events": len(truth.events)},
                    "motion": extra,
                    "rows": [r.__dict__ for r in rows],
                    "projection_to_24h": scale,
                    "load": os.getloadavg()[0],
                },
                indent=1,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
