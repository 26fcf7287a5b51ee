"""`markguard bench serve`: throughput and latency of the served model against the bare model and a naive server.

In one run, on loopback only, with a temporary home and its own servers (stopped at the end):
1. the bare model's images/s (preprocess + forward on decoded photos) in this process, at 1 and all
   threads and batch 1 and each `--batch`; the best batched figure is "bare", measured again after the
   served embedding-only levels (the machine may be shared) and the higher kept;
2. the batched service (`markguard serve`, its embedder's largest batch set to the bare model's best):
   images/s, p50 and p95 at concurrency 1, 4 and 16, for the embedding-only path (`POST /v1/embed`: upload,
   decode, resize, forward) and the full path (`POST /v1/score`);
3. a naive server (the same service with `MARKGUARD_BATCHING=0`: each request runs its own forward pass in
   the scoring worker, requests side by side in threads) at concurrency 16, embedding-only.
Last line: `ratio=<served/bare at concurrency 16, embedding-only> speedup_vs_naive=<served/naive>`.
Each level is bounded by `--requests` and `--seconds`. The load client is one asyncio loop on raw
keep-alive connections with pre-encoded requests, as it shares the cores with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from markguard.serving.settings import get_settings

__all__ = ["get_args_parser", "main"]

_REQUEST_TIMEOUT = 120.0  # seconds; a request slower than this fails the run (and stops the servers)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("markguard bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(get_settings().data / "grocery-packages"),
                   help="grocery-packages folder: iconic/ is enrolled, train/ photos are sent")
    p.add_argument("--requests", type=int, default=64, help="requests per level at most")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per level at most")
    p.add_argument("--batch", default="4,8,16",
                   help="batch sizes of the bare model, comma-separated (batch 1 is always measured); the best "
                        "is the bare figure and the served embedder's largest batch")
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


def _request(port: int, route: str, key: str, photo: bytes, fields: dict[str, str]) -> bytes:
    """One pre-encoded HTTP/1.1 request: a multipart form with the photo as `image` and the text fields."""
    boundary = "markguard-bench-7d1c4e"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    body = b"".join(parts)
    head = (f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes, bool]:
    """(status, body, server keeps the connection) for one request on an open connection."""
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, chunked, keep = 0, False, True
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            keep = value != "close"
    if not chunked:
        return status, await reader.readexactly(length), keep
    body = b""
    while size := int((await reader.readline()).strip(), 16):
        body += await reader.readexactly(size)
        await reader.readline()
    await reader.readline()
    return status, body, keep


def _load(port: int, route: str, key: str, photos: list[bytes], *, concurrency: int, requests: int,
          seconds: float, fields: dict[str, str]) -> tuple[float, float, float, int]:
    """(images/s, p50 ms, p95 ms, requests done) for `concurrency` clients sending photos in turn.

    The client is deliberately light, as it shares the cores with the server: one asyncio loop, one
    keep-alive connection per client, requests encoded before the clock starts, responses only counted.
    """
    encoded = [_request(port, route, key, p, fields) for p in photos]
    return asyncio.run(_run_clients(port, route, encoded, concurrency=concurrency, requests=requests,
                                    seconds=seconds))


async def _run_clients(port: int, route: str, encoded: list[bytes], *, concurrency: int, requests: int,
                       seconds: float) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    counter = iter(range(requests))
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline and (i := next(counter, None)) is not None:
                t = time.perf_counter()
                status, body, keep = await asyncio.wait_for(_exchange(reader, writer, encoded[i % len(encoded)]),
                                                            timeout=_REQUEST_TIMEOUT)
                if status != 200:
                    raise RuntimeError(f"{route}: {status} {body[:200]!r}")
                latencies.append(time.perf_counter() - t)
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return len(latencies) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), len(latencies)


class _Bare:
    """The model alone in this process: preprocess + forward on decoded photos, in batches."""

    def __init__(self, home_root: Path, photos: list[bytes]) -> None:
        from markguard.serving.registry import ensure_default_model
        from markguard.serving.state.home import Home
        from markguard.vision.decode import decode_image

        self.model = ensure_default_model(Home(home_root)).load_embedder(device="cpu", fuse=True)
        self.images = [decode_image(p) for p in photos]

    def rate(self, *, batch: int, threads: int, requests: int, seconds: float) -> float:
        """Images/s over at most `requests` images (whole batches) and `seconds`, after one warm-up batch."""
        import torch

        from markguard.vision.embed import preprocess

        torch.set_num_threads(threads)
        images, config = self.images, self.model.config
        with torch.inference_mode():
            self.model(preprocess(images[:batch], config))  # warm-up
            done, started = 0, time.perf_counter()
            while done < requests and time.perf_counter() - started < seconds:
                self.model(preprocess([images[(done + i) % len(images)] for i in range(batch)], config))
                done += batch
            return done / (time.perf_counter() - started)


def _prepare(home_root: Path, data: Path) -> str:
    """A home with one brand enrolled from `data/iconic`; returns a platform key."""
    from markguard.serving.brands import add_brand
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.keys import Role, create_key
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home

    home = Home(home_root)
    artifact = ensure_default_model(home)
    with home.sessions.begin() as session:
        add_brand(session, "Oatly")
    enroll(home, artifact, artifact.load_embedder(fuse=True), brand="Oatly",
           inputs=collect_inputs([data / "iconic"])[:40])
    key, _ = create_key(home, role=Role.PLATFORM)
    home.close()
    return key


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = Path(args.data)
    photos = [p.read_bytes() for p in sorted((data / "train").rglob("*.jpg"))[:: 7][:64]]
    if not photos:
        print(f"no photos under {data / 'train'}")
        return 2
    batches = sorted({int(b) for b in args.batch.split(",")})
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="markguard-bench-serve-") as tmp:
        print(f"home={tmp}", flush=True)
        home_root = Path(tmp) / "home"
        key = _prepare(home_root, data)
        print(f"photos={len(photos)} cores={cores} workers={args.workers} ocr={args.ocr} "
              f"requests<= {args.requests} seconds<= {args.seconds} per level", flush=True)

        bare_model = _Bare(home_root, photos)
        rates: dict[tuple[int, int], float] = {}
        for threads in sorted({1, cores}):  # the bare model at its best thread count and batch size
            for batch in sorted({1, *batches}):
                rates[threads, batch] = rate = bare_model.rate(
                    batch=batch, threads=threads, requests=max(args.requests, 4 * batch), seconds=args.seconds)
                print(f"bare model (batch {batch}, {threads} threads): {rate:.1f} images/s", flush=True)
        best_threads, best_batch = max((k for k in rates if k[1] > 1), key=rates.__getitem__)
        bare = rates[best_threads, best_batch]
        gain = bare / max(rates[t, 1] for t in {1, cores})
        print(f"bare model best: batch {best_batch}, {best_threads} threads; batching gain over batch 1: "
              f"{gain:.2f}x (the most any server can gain over one forward pass per request)", flush=True)

        env = {"MARKGUARD_RATE": "1000000", "MARKGUARD_BURST": "1000000", "MARKGUARD_WORKERS": str(args.workers),
               "MARKGUARD_OCR": "1" if args.ocr else "0", "MARKGUARD_MAX_BATCH": str(best_batch)}
        served16 = naive16 = 0.0
        server = _Server(home_root, env=env, timeout=args.startup_timeout)
        try:
            for route, fields in (("/v1/embed", {}), ("/v1/score", {"brand": "Oatly"})):
                _load(server.port, route, key, photos, concurrency=2, requests=4, seconds=30, fields=fields)  # warm
                for conc in (1, 4, 16):
                    rate, p50, p95, n = _load(server.port, route, key, photos, concurrency=conc,
                                              requests=args.requests, seconds=args.seconds, fields=fields)
                    path = "embedding-only" if route == "/v1/embed" else "full"
                    print(f"served {path:14s} c={conc:<2d} {rate:7.1f} images/s  p50={p50:7.1f} ms  "
                          f"p95={p95:7.1f} ms  (n={n})", flush=True)
                    if route == "/v1/embed" and conc == 16:
                        served16 = rate
                if route == "/v1/embed":  # the bare model again, as the machine's load may have changed
                    again = bare_model.rate(batch=best_batch, threads=best_threads,
                                            requests=max(args.requests, 4 * best_batch), seconds=args.seconds)
                    print(f"bare model again (batch {best_batch}, {best_threads} threads): {again:.1f} images/s; "
                          f"the ratio uses the higher", flush=True)
                    bare = max(bare, again)
        except Exception:
            print(server.tail(), file=sys.stderr)
            raise
        finally:
            server.stop()
        naive = _Server(home_root, env={**env, "MARKGUARD_BATCHING": "0"}, timeout=args.startup_timeout)
        try:
            _load(naive.port, "/v1/embed", key, photos, concurrency=2, requests=4, seconds=30, fields={})
            naive16, p50, p95, n = _load(naive.port, "/v1/embed", key, photos, concurrency=16,
                                         requests=args.requests, seconds=args.seconds, fields={})
            print(f"naive  embedding-only c=16 {naive16:7.1f} images/s  p50={p50:7.1f} ms  p95={p95:7.1f} ms  "
                  f"(n={n}; one forward pass per request)", flush=True)
        except Exception:
            print(naive.tail(), file=sys.stderr)
            raise
        finally:
            naive.stop()
    print(f"ratio={served16 / bare:.2f} speedup_vs_naive={served16 / naive16:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
