"""`markguard bench serve`: throughput and latency of the served model against the bare model and a naive server.

In one run, on loopback only, with a temporary home and its own servers (stopped at the end):
1. the bare model's batched images/s (preprocess + forward, batches of `--batch`) in this process;
2. the batched service (`markguard serve`): images/s, p50 and p95 at concurrency 1, 4 and 16, for the
   embedding-only path (`POST /embed`) and the full path (`POST /score`);
3. a naive server (the same service with `MARKGUARD_BATCHING=0`: one forward pass per request) at
   concurrency 16, embedding-only.
Last line: `ratio=<served/bare at concurrency 16, embedding-only> speedup_vs_naive=<served/naive>`.
Each level is bounded by `--requests` and `--seconds`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["get_args_parser", "main"]

_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery-packages"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("markguard bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("MARKGUARD_SHARED_DATA_GROCERY", str(_DATA)),
                   help="grocery-packages folder: iconic/ is enrolled, train/ photos are sent")
    p.add_argument("--requests", type=int, default=64, help="requests per level at most")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per level at most")
    p.add_argument("--batch", type=int, default=16, help="batch size of the bare model")
    p.add_argument("--workers", type=int, default=1, help="scoring workers of the served service")
    p.add_argument("--ocr", action="store_true", help="read text on the full path (slow on few cores)")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A `markguard serve` subprocess on a free loopback port, in its own process group."""

    def __init__(self, home: Path, *, env: dict[str, str], timeout: float) -> None:
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / f"serve-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "markguard.serving.cli", "serve", "--home", str(home), "--host", "127.0.0.1",
             "--port", str(self.port)],
            env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s; see {self.log.name}")

    def tail(self, lines: int = 40) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if "[INFO]" not in line and '"INFO"' not in line)[-8000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _load(url: str, route: str, key: str, photos: list[bytes], *, concurrency: int, requests: int,
          seconds: float, fields: dict[str, str]) -> tuple[float, float, float, int]:
    """(images/s, p50 ms, p95 ms, requests done) for `concurrency` clients sending photos in turn."""
    import httpx

    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency + 2))
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    lock, counter = threading.Lock(), iter(range(requests))
    started = time.perf_counter()
    deadline = started + seconds

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            r = client.post(url + route, headers=headers, data=fields,
                            files={"image": ("p.jpg", photos[i % len(photos)], "image/jpeg")})
            if r.status_code != 200:
                raise RuntimeError(f"{route}: {r.status_code} {r.text[:200]} (log: {url})")
            with lock:
                latencies.append(time.perf_counter() - t)

    with cf.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - started
    client.close()
    ms = np.array(latencies) * 1000
    return len(latencies) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), len(latencies)


def _bare(home_root: Path, photos: list[bytes], *, batch: int, requests: int, seconds: float,
          threads: int) -> float:
    import torch

    from markguard.serving.models import ensure_default_model
    from markguard.serving.state.home import Home
    from markguard.vision.decode import decode_image
    from markguard.vision.embed import preprocess

    torch.set_num_threads(threads)
    model = ensure_default_model(Home(home_root)).load_embedder(device="cpu", fuse=True)
    images = [decode_image(p) for p in photos]
    with torch.inference_mode():
        model(preprocess(images[:batch], model.config))  # warm-up
        done, started = 0, time.perf_counter()
        while done < requests and time.perf_counter() - started < seconds:
            chunk = [images[(done + i) % len(images)] for i in range(batch)]
            model(preprocess(chunk, model.config))
            done += batch
        return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = Path(args.data)
    photos = [p.read_bytes() for p in sorted((data / "train").rglob("*.jpg"))[:: 7][:64]]
    if not photos:
        print(f"no photos under {data / 'train'}")
        return 2
    with tempfile.TemporaryDirectory(prefix="markguard-bench-serve-") as tmp:
        print(f"home={tmp}", flush=True)
        from markguard.serving.enroll import collect_inputs, enroll
        from markguard.serving.keys import Role, create_key
        from markguard.serving.models import ensure_default_model
        from markguard.serving.state.home import Home

        home_root = Path(tmp) / "home"
        home = Home(home_root)
        artifact = ensure_default_model(home)
        from markguard.serving.brands import add_brand

        with home.sessions.begin() as session:
            add_brand(session, "Oatly")
        enroll(home, artifact, artifact.load_embedder(fuse=True), brand="Oatly",
               inputs=collect_inputs([data / "iconic"])[:40])
        key, _ = create_key(home, role=Role.PLATFORM)
        home.close()
        print(f"photos={len(photos)} cores={os.cpu_count()} workers={args.workers} ocr={args.ocr} "
              f"requests<= {args.requests} seconds<= {args.seconds} per level", flush=True)

        bare = 0.0
        for threads in sorted({1, os.cpu_count() or 1}):  # the bare model at its best thread count
            rate = _bare(home_root, photos, batch=args.batch, requests=max(args.requests, 4 * args.batch),
                         seconds=args.seconds, threads=threads)
            print(f"bare model (batch {args.batch}, {threads} threads): {rate:.1f} images/s", flush=True)
            bare = max(bare, rate)

        env = {"MARKGUARD_RATE": "1000000", "MARKGUARD_BURST": "1000000", "MARKGUARD_WORKERS": str(args.workers),
               "MARKGUARD_OCR": "1" if args.ocr else "0"}
        served16 = naive16 = 0.0
        server = _Server(home_root, env=env, timeout=args.startup_timeout)
        try:
            for route, fields in (("/embed", {}), ("/score", {"brand": "Oatly"})):
                _load(server.url, route, key, photos, concurrency=2, requests=4, seconds=30, fields=fields)  # warm
                for conc in (1, 4, 16):
                    rate, p50, p95, n = _load(server.url, route, key, photos, concurrency=conc,
                                              requests=args.requests, seconds=args.seconds, fields=fields)
                    path = "embedding-only" if route == "/embed" else "full"
                    print(f"served {path:14s} c={conc:<2d} {rate:7.1f} images/s  p50={p50:7.1f} ms  "
                          f"p95={p95:7.1f} ms  (n={n})", flush=True)
                    if route == "/embed" and conc == 16:
                        served16 = rate
        except Exception:
            print(server.tail(), file=sys.stderr)
            raise
        finally:
            server.stop()
        naive = _Server(home_root, env={**env, "MARKGUARD_BATCHING": "0"}, timeout=args.startup_timeout)
        try:
            _load(naive.url, "/embed", key, photos, concurrency=2, requests=4, seconds=30, fields={})
            naive16, p50, p95, n = _load(naive.url, "/embed", key, photos, concurrency=16,
                                         requests=args.requests, seconds=args.seconds, fields={})
            print(f"naive  embedding-only c=16 {naive16:7.1f} images/s  p50={p50:7.1f} ms  p95={p95:7.1f} ms  "
                  f"(n={n}; one forward pass per request)", flush=True)
        finally:
            naive.stop()
    print(f"ratio={served16 / bare:.2f} speedup_vs_naive={served16 / naive16:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
