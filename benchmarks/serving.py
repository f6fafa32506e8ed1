"""Serving benchmark on camera photos: keeneye against the servers a user would pick instead, in one run.

    .venv/bin/python benchmarks/serving.py [--seconds 20] [--rounds 2] [--photos 400] [--json out.json]

The same model (a real timm MobileNetV2 at 224 px, random weights, as ONNX with 2 intra-op threads),
the same inputs and the same load for every server:

* inputs: distinct camera-like 640×480 JPEG photos (benchmarks/photos.py, ~90 KB each); every request
  gets its own bytes (a JPEG comment carries its number), so no cache ever answers;
* load: closed-loop clients in their own process, one multipart image per request, at 1, 8 and 32
  clients, ``--warmup`` seconds then ``--seconds`` measured per level;
* every server decodes, resizes, normalises, runs ONNX Runtime and returns the top 3.

Servers (each its own process, started by this script):

1. keeneye ``serve --workers 2`` (``--workers``), otherwise its defaults: micro-batching, every image and
   answer stored durably (group commit), metrics, drift — the per-client rate limit lifted, since one
   load generator is one client address;
2. a naive FastAPI server (no batching, nothing stored): benchmarks/peers/naive_server.py;
3. LitServe with dynamic batching: benchmarks/peers/litserve_server.py;
4. BentoML with adaptive batching: benchmarks/peers/bentoml_service.py.

LitServe and BentoML run in their own virtualenvs under ``~/.cache/keeneye-bench/venvs`` (created
with pip on first use; ``--peers naive`` skips them). In-process baselines, in the same run: ONNX
Runtime inference alone (best batch), and decode + preprocess + inference on every core with no server
at all (the better of batches of 16 fed by a decode thread per core, or up to 4 threads per core
doing batch-1 inference) — the ceiling a server on this machine could reach. It prints a table per round
and the ratios keeneye / best peer and keeneye / ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from photos import camera_jpegs  # noqa: E402

CLIENTS = (1, 8, 32)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keeneye-bench"
PEER_PACKAGES = {
    "litserve": ["litserve", "fastapi", "uvicorn"],
    "bentoml": ["bentoml", "pillow"],
}
COMMON_PACKAGES = ["onnxruntime", "numpy", "opencv-python-headless<5", "python-multipart"]
CLASSES = 10


def mobilenet_v2_onnx(num_classes: int, size: int) -> tuple[bytes, str]:
    """A real MobileNetV2 (timm, random weights, nothing downloaded) as ONNX; a stand-in without torch."""
    try:
        import io

        import timm
        import torch
    except ImportError:
        from keeneye.models.testing import mobilenet_like_classifier

        return mobilenet_like_classifier(
            num_classes, size=size
        ), "mobilenet_like_classifier (no torch installed)"
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=num_classes).eval()
    out = io.BytesIO()
    torch.onnx.export(
        model, torch.zeros(1, 3, size, size), out, input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return out.getvalue(), "timm mobilenetv2_100 (random weights)"


def tagged(photo: bytes, n: int) -> bytes:
    """``photo`` with a JPEG comment segment holding ``n``: distinct bytes, the same pixels and cost."""
    tag = f"keeneye-bench {n}".encode()
    return photo[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + photo[2:]


def _non_ok(statuses: dict[Any, int]) -> str:
    """The statuses other than 200, e.g. ``(503 ×12)``: what kind of error a server answered."""
    return "(" + ", ".join(f"{code} ×{n}" for code, n in sorted(statuses.items()) if int(code) != 200) + ")"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


# ------------------------------------------------------------------------------------------------ load


def _load_worker(
    url: str, photos: list[bytes], clients: int, warmup: float, seconds: float, offset: int, queue: Any
) -> None:
    import httpx

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        counter = offset
        measuring = False

        async def client(http: httpx.AsyncClient, until: float) -> None:
            nonlocal counter
            while time.perf_counter() < until:
                counter += 1
                data = tagged(photos[counter % len(photos)], counter)
                t = time.perf_counter()
                r = await http.post(url, files={"file": ("photo.jpg", data, "image/jpeg")})
                if measuring:
                    latencies.append((time.perf_counter() - t) * 1000)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            end = time.perf_counter() + warmup
            await asyncio.gather(*(client(http, end) for _ in range(clients)))
            measuring = True
            start = time.perf_counter()
            await asyncio.gather(*(client(http, start + seconds) for _ in range(clients)))
            wall = time.perf_counter() - start
        ok = statuses.get(200, 0)
        return {
            "requests": len(latencies),
            "errors": len(latencies) - ok,
            "statuses": statuses,
            "rps": ok / wall,
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
        }

    queue.put(asyncio.run(main()))


def run_load(
    url: str, photos: list[bytes], clients: int, args: argparse.Namespace, offset: int
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_load_worker, args=(url, photos, clients, args.warmup, args.seconds, offset, queue)
    )
    proc.start()
    result: dict[str, Any] = queue.get(timeout=args.warmup + args.seconds + 600)
    proc.join()
    return result


# ------------------------------------------------------------------------------------------------ servers


def peer_python(name: str) -> Path | None:
    """The peer's virtualenv interpreter, created on first use; None (reason printed) if pip fails."""
    venv = CACHE / "venvs" / name
    python = venv / "bin" / "python"
    stamp = venv / ".ready"
    if stamp.exists():
        return python
    print(f"creating the {name} virtualenv in {venv} (once) …", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES[name], *COMMON_PACKAGES],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        print(f"  {name} skipped: pip failed ({exc})")
        return None
    stamp.touch()
    return python


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def server(cmd: list[str], env: dict[str, str], ready_url: str, cwd: Path, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        # Its own process group: servers spawn workers (uvicorn, LitServe, BentoML), and a worker left
        # running would take CPU from the next server measured.
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(ready_url, proc, log)
            yield
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                proc.wait()
                return
            proc.poll()
            time.sleep(0.1)
    proc.wait()


def servers(args: argparse.Namespace, home: Path, model: Path, work: Path) -> dict[str, Any]:
    """name → (command, env, predict URL, ready URL, cwd) for every server to measure."""
    from tests.services import free_port

    peer_env = {"BENCH_MODEL": str(model), "BENCH_SIZE": "224", "BENCH_THREADS": "2"}
    out: dict[str, Any] = {}
    port = free_port()
    out["keeneye"] = (
        [
            str(REPO / ".venv" / "bin" / "keeneye"),
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        {
            "KEENEYE_HOME": str(home),
            "KEENEYE_CONFIG": os.devnull,
            "KEENEYE_PIPELINES__DIRS": json.dumps([str(home / "pipelines")]),
            # The load generator is one address standing for up to 32 clients: lift the per-client
            # concurrency cap (16 by default) as the rate limit is lifted below.
            "KEENEYE_SERVING__MAX_INFLIGHT_PER_CLIENT": "128",
        },
        f"http://127.0.0.1:{port}/v1/pipelines/species-id/predict",
        f"http://127.0.0.1:{port}/ready",
        REPO,
    )
    port = free_port()
    out["naive"] = (
        [sys.executable, str(HERE / "peers" / "naive_server.py"), str(port)],
        peer_env,
        f"http://127.0.0.1:{port}/predict",
        f"http://127.0.0.1:{port}/docs",
        HERE / "peers",
    )
    for name in ("litserve", "bentoml"):
        if name not in args.peers:
            continue
        python = peer_python(name)
        if python is None:
            continue
        port = free_port()
        if name == "litserve":
            cmd = [str(python), str(HERE / "peers" / "litserve_server.py"), str(port)]
            ready = f"http://127.0.0.1:{port}/health"
        else:
            cmd = [str(python.parent / "bentoml"), "serve", "bentoml_service:Classifier", "--port", str(port)]
            ready = f"http://127.0.0.1:{port}/readyz"
        out[name] = (cmd, peer_env, f"http://127.0.0.1:{port}/predict", ready, HERE / "peers")
    return out


# ------------------------------------------------------------------------------------------------ in process


def in_process(model: Path, photos: list[bytes]) -> dict[str, Any]:
    """Inference alone (best batch) and decode+preprocess+inference pipelined over every core."""
    sys.path.insert(0, str(HERE / "peers"))
    os.environ.update(BENCH_MODEL=str(model), BENCH_SIZE="224", BENCH_THREADS="2")
    from classifier import Classifier

    clf = Classifier()
    t = time.perf_counter()
    tensors = np.stack([clf.preprocess(p) for p in photos])
    decode_ms = (time.perf_counter() - t) * 1000 / len(photos)
    best: dict[str, float] = {"rps": 0.0, "batch": 0}
    for batch in (1, 8, 16, 32):
        clf.infer(tensors[:batch])
        t = time.perf_counter()
        for i in range(0, len(tensors), batch):
            clf.infer(tensors[i : i + batch])
        rps = len(tensors) / (time.perf_counter() - t)
        if rps > best["rps"]:
            best = {"rps": rps, "batch": batch}
    # The ceiling: what this machine does with these photos without HTTP, storage or any server — the
    # best of two in-process ways to spend the cores. (a) batched: every core's thread decodes batches of
    # 16 (OpenCV releases the GIL) while ONNX Runtime runs the batches in order; (b) per image: 1, 2 or 4
    # threads per core, each decoding and running batch-1 inference, as the naive server's pool does.
    cores = os.cpu_count() or 2
    batch = 16
    chunks = [photos[i : i + batch] for i in range(0, len(photos), batch)]
    with ThreadPoolExecutor(max_workers=cores) as pool:
        t = time.perf_counter()
        futures = [pool.submit(lambda c: np.stack(list(map(clf.preprocess, c))), c) for c in chunks]
        for future in futures:
            clf.infer(future.result())
        batched = len(photos) / (time.perf_counter() - t)
    single = 0.0
    for threads in (cores, 2 * cores, 4 * cores):  # more concurrent runs hide ORT's thread hand-offs
        with ThreadPoolExecutor(max_workers=threads) as pool:
            t = time.perf_counter()
            list(pool.map(lambda p: clf.infer(clf.preprocess(p)[None]), photos))
            single = max(single, len(photos) / (time.perf_counter() - t))
    ceiling = max(batched, single)
    return {
        "inference": best,
        "decode_preprocess_ms": decode_ms,
        "ceiling_rps": ceiling,
        "ceiling_batched_rps": batched,
        "ceiling_per_image_rps": single,
    }


# ------------------------------------------------------------------------------------------------ main


def prepare_keeneye(home: Path, onnx: bytes, size: int = 224) -> None:
    from tests.serving_support import with_species_limits

    from keeneye.models.bundle import ModelBundle
    from keeneye.models.manifest import ModelManifest
    from keeneye.registry import ModelRegistry
    from keeneye.settings import Settings
    from keeneye.store import open_results_db

    os.environ["KEENEYE_CONFIG"] = os.devnull
    home.mkdir(parents=True, exist_ok=True)
    # One load generator is one client address: lift the per-client rate limit, keep everything else.
    settings = with_species_limits(Settings(home=home), home, rate_per_second=1e9, burst=10**9)
    manifest = ModelManifest.model_validate(
        {
            "name": "species-id",
            "task": "classify",
            "output_format": "logits",
            "input": {
                "width": size,
                "height": size,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
            "classes": [f"species_{i}" for i in range(CLASSES)],
        }
    )
    bundle = ModelBundle.write(home / "bundle", onnx, manifest)
    ModelRegistry(settings, events=open_results_db(settings)).register(
        "species-id", bundle, alias="champion", gates_passed=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per load level")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each level")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every server this many times")
    parser.add_argument("--photos", type=int, default=400, help="distinct photos generated")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--peers", default="naive,litserve,bentoml", help="peers to measure besides keeneye (comma list)"
    )
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="load levels")
    parser.add_argument(
        "--workers", type=int, default=2, help="keeneye serve --workers (processes sharing the port)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.peers = set(args.peers.split(","))
    levels = [int(c) for c in args.clients.split(",")]

    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="keeneye-bench-"))
    model_path = CACHE / "mobilenetv2_224.onnx"
    model_name = "timm mobilenetv2_100 (random weights)"
    if not model_path.exists():
        onnx, model_name = mobilenet_v2_onnx(CLASSES, 224)
        model_path.write_bytes(onnx)
    photos = camera_jpegs(args.photos, args.width, args.height)
    sizes = [len(p) / 1000 for p in photos]
    print(
        f"model: {model_name}, 224 px · {len(photos)} distinct {args.width}×{args.height} JPEG photos, "
        f"{np.mean(sizes):.0f} KB mean · {os.cpu_count()} cores · {args.seconds:.0f} s per level"
    )
    figures: dict[str, Any] = {
        "cores": os.cpu_count(),
        "photos": len(photos),
        "kb_mean": float(np.mean(sizes)),
    }

    base = in_process(model_path, photos)
    figures["in_process"] = base
    inf = base["inference"]
    print(
        f"in process: inference alone {inf['rps']:.1f} img/s (batch {inf['batch']}) · decode+preprocess "
        f"{base['decode_preprocess_ms']:.1f} ms/img on one thread · "
        f"ceiling {base['ceiling_rps']:.1f} img/s (batched {base['ceiling_batched_rps']:.1f}, "
        f"per image on up to {4 * (os.cpu_count() or 2)} threads {base['ceiling_per_image_rps']:.1f})"
    )

    home = work / "home"
    prepare_keeneye(home, model_path.read_bytes())
    table = servers(args, home, model_path, work)
    rounds: list[dict[str, dict[int, dict[str, Any]]]] = []
    offset = 0
    for r in range(args.rounds):
        results: dict[str, dict[int, dict[str, Any]]] = {}
        for name, (cmd, env, url, ready, cwd) in table.items():
            if name != "keeneye" and name not in args.peers:
                continue
            results[name] = {}
            with server(cmd, env, ready, cwd, work / f"{name}.log"):
                for clients in levels:
                    offset += 1_000_000
                    res = run_load(url, photos, clients, args, offset)
                    results[name][clients] = res
                    print(
                        f"round {r + 1}  {name:<9} {clients:>2} clients: {res['rps']:6.1f} req/s  "
                        f"p50 {res['p50']:5.0f}  p95 {res['p95']:5.0f}  p99 {res['p99']:5.0f} ms  "
                        f"errors {res['errors']}" + (f" {_non_ok(res['statuses'])}" if res["errors"] else ""),
                        flush=True,
                    )
        rounds.append(results)
    figures["rounds"] = rounds

    heads = " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in levels)
    numbers = " / ".join(str(i + 1) for i in range(len(rounds)))
    print(f"\n| req/s (round {numbers}) | {heads} | p95 at {levels[-1]} |")
    print("|---" * (len(levels) + 2) + "|")
    for name in rounds[0]:
        cells = [" / ".join(f"{rd[name][c]['rps']:.1f}" for rd in rounds) for c in levels]
        p95 = " / ".join(f"{rd[name][levels[-1]]['p95']:.0f}" for rd in rounds)
        print(f"| {name} | " + " | ".join(cells) + f" | {p95} ms |")

    ratios: dict[str, Any] = {}
    for i, rd in enumerate(rounds):
        peers = [n for n in rd if n != "keeneye"]
        per_level = {}
        for c in levels:
            best = max(peers, key=lambda n: rd[n][c]["rps"]) if peers else None
            per_level[c] = {
                "best_peer": best,
                "vs_best_peer": rd["keeneye"][c]["rps"] / rd[best][c]["rps"] if best else None,
                "p95_vs_best_peer": rd["keeneye"][c]["p95"] / rd[best][c]["p95"] if best else None,
                "vs_ceiling": rd["keeneye"][c]["rps"] / base["ceiling_rps"],
            }
        if "naive" in rd and 1 in levels:
            per_level["p50_at_1_vs_naive"] = rd["keeneye"][1]["p50"] / rd["naive"][1]["p50"]
        ratios[f"round_{i + 1}"] = per_level
        print(f"\nround {i + 1}:")
        for c in levels:
            p = per_level[c]
            if p["best_peer"]:
                print(
                    f"  {c:>2} clients: keeneye / best peer ({p['best_peer']}) {p['vs_best_peer']:.2f}×"
                    f" (goal ≥ 1.3 at 8 and 32), p95 {p['p95_vs_best_peer']:.2f}× the peer's (goal ≤ 1),"
                    f" keeneye / ceiling {p['vs_ceiling']:.2f} (goal ≥ 0.8)"
                )
        if "p50_at_1_vs_naive" in per_level:
            print(f"  1 client p50: keeneye / naive {per_level['p50_at_1_vs_naive']:.2f}× (goal ≤ 1.2)")
    figures["ratios"] = ratios
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))


if __name__ == "__main__":
    main()
