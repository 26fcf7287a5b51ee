"""`markguard bench scan`: one feed of real grocery photos with true and false claims, scanned by each
scan path in this process: photos/s, process CPU seconds by stage, decision agreement with the first
path and claim AUC.

The paths: `today` is the full path as it was (OCR on every photo, eager PyTorch, local engine); `local`
is the cheaper full path (OCR where it can matter, `vision.pipeline.OcrGate`; ONNX Runtime,
`vision.runtime`) on the local engine; `ray` is the same on the Ray engine, against a cluster that is up
before the scan starts (`ray start --head` on this machine, as `markguard scan --ray-address` meets one;
its start-up and the driver's import of Ray Data are reported, not timed); `ray_cold` (not run by
default) starts a private Ray instance inside the timed scan, as `markguard scan --engine ray` without
an address does. The machine's runtime caches (ONNX graphs, the probe's int8 CRAFT) are built before
the first clock (`prepare_seconds`), as a machine's first scan builds them once. The last line:
`speedup` (local over today, photos/s), `ray_vs_local`, and `auc_delta` (local's claim AUC − today's).

The catalog: the grocery brands with each product's iconic image enrolled. The feed: val photos, then
train photos (none of them enrolled), alternately claiming their own product (a genuine claim) and
another product of the same brand (a false claim; another brand's where the brand has one product).
Every path scans its own copy of the same home, so none sees another's listings. The paths are the
`PATHS` registry: a new one (a baseline) is one entry, and the last line names each one's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["get_args_parser", "main", "PATHS", "build_feed", "enroll_catalog"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench scan", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("MARKGUARD_SHARED_DATA", "../shared/data")))
    p.add_argument("--photos", "--limit", type=int, default=300,
                   help="feed rows, one distinct photo each (default 300; fewer for a quick run)")
    p.add_argument("--workers", type=int, default=0, help="scorers per engine (default: one per core)")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--no-ocr", action="store_true", help="skip reading text on every path")
    p.add_argument("--paths", default="today,local,ray", help="which paths to run, first is the reference")
    p.add_argument("--gate", choices=("own", "all"), default="own",
                   help="the wordmark readings the OCR gate weighs on the cheaper paths (vision.pipeline.OcrGate)")
    p.add_argument("--ray-address", help="the ray path's cluster (default: `ray start --head` here, before the clock)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-scan.json"))
    return p


def build_feed(data: Path, feed: Path, *, photos: int, seed: int) -> tuple[list[str], dict[str, int]]:
    """Write the feed; returns the products to enroll and each listing's label (1: a false claim)."""
    from markguard.datasets.grocery import brand_of

    root = data / "grocery-packages"
    products = sorted(p.parent.name for p in (root / "iconic" / "Packages").glob("*/*/*_Iconic.jpg"))
    pool = sorted((root / "val" / "Packages").glob("*/*/*.jpg"))
    pool += sorted((root / "train" / "Packages").glob("*/*/*.jpg"))
    pool = [p for p in pool if p.parent.name in products]
    rng = np.random.default_rng(seed)
    chosen = pool[:100] + [pool[100 + int(i)] for i in sorted(rng.permutation(len(pool) - 100)[: max(0, photos - 100)])]
    chosen = chosen[:photos]
    if len(chosen) < photos:
        raise SystemExit(f"markguard: only {len(chosen)} grocery photos under {root}")
    labels, rows = {}, []
    for i, path in enumerate(chosen):
        product = path.parent.name
        brand = brand_of(product)
        claim = product
        if i % 2:  # a false claim: the same brand's other product, else another brand's
            same = [p for p in products if brand_of(p) == brand and p != product]
            claim = same[int(rng.integers(len(same)))] if same else products[int(rng.integers(len(products)))]
            while claim == product:
                claim = products[int(rng.integers(len(products)))]
        listing = f"bench-{i:04d}"
        labels[listing] = int(claim != product)
        rows.append({"listing_id": listing, "seller_id": f"seller-{i % 17}", "brand": brand_of(claim),
                     "product": claim, "title": claim.replace("-", " "), "image": str(path.resolve())})
    feed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return products, labels


def enroll_catalog(home: Any, data: Path, products: list[str]) -> Any:
    """The bench catalog in `home` (a `Home`): every grocery brand of `products`, and each product's
    iconic image enrolled; returns the model artifact."""
    from markguard.datasets.grocery import brand_of
    from markguard.serving.brands import add_brand
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model

    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    with home.sessions.begin() as session:
        for brand in sorted({brand_of(p) for p in products}):
            add_brand(session, brand)
    iconic = data / "grocery-packages" / "iconic" / "Packages"
    for product in products:
        enroll(home, artifact, model, brand=brand_of(product), product=product,
               inputs=collect_inputs(sorted(iconic.glob(f"*/{product}/*_Iconic.jpg"))))
    return artifact


def _prepare_runtimes(tmp: Path, args: argparse.Namespace) -> float:
    """Build this machine's runtime caches (the ONNX graphs, the probe's int8 CRAFT) before any clock,
    on a copy of the bench home: a machine builds them once, on its first scan, and a cold cache in
    the `local` clock measured that build, not the path. Returns the seconds it took."""
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.state.home import Home
    from markguard.vision.pipeline import OcrGate

    started = time.perf_counter()
    shutil.copytree(tmp / "home", tmp / "home-prepare")
    home = Home(tmp / "home-prepare")
    try:
        ScoringEngine(home, ocr=not args.no_ocr, ocr_gate=OcrGate(), runtime="onnx").prepare()
    finally:
        home.close()
    return round(time.perf_counter() - started, 2)


def _scan_path(engine: str, *, gated: bool = True, runtime: str = "onnx") -> Callable[..., dict[str, Any]]:
    def run(home: Path, feed: Path, out: Path, args: argparse.Namespace, ray_address: str | None = None
            ) -> dict[str, Any]:
        from markguard.serving.scan import ScanSettings, run_scan

        settings = ScanSettings(home=str(home), feed=feed, ocr=not args.no_ocr, chunk=args.chunk,
                                workers=args.workers, ocr_gate=gated, runtime=runtime, gate_outcomes=args.gate,
                                ray_address=ray_address)
        started = time.perf_counter()
        summary = run_scan(settings, out, engine=engine, progress=True)
        seconds = time.perf_counter() - started
        results = {}
        for line in (out / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            results[row["listing_id"]] = row
        scored = summary["by_status"].get("scored", 0)
        cpu = summary["cpu_seconds"]
        per_photo = {k: round(v / max(1, scored) * 1000, 1) for k, v in cpu.items() if k not in ("ocr_photos", "ocr_probes", "busy")}
        return {"results": results, "seconds": round(seconds, 2), "scored": scored,
                "errors": summary["errors"], "photos_per_second": round(scored / seconds, 3),
                "cpu_ms_per_photo": per_photo, "ocr_share": round(cpu.get("ocr_photos", 0) / max(1, scored), 4),
                "probe_share": round(cpu.get("ocr_probes", 0) / max(1, scored), 4),
                # the scorers' wall seconds on chunks over scorers x scan seconds: below 1, scorers waited
                "busy_share": round(cpu.get("busy", 0.0) / ((1 if args.workers < 0 else settings.scorers) * seconds), 4),
                "cpu_seconds_per_photo": round((cpu.get("worker", 0.0) + cpu.get("driver", 0.0)) / max(1, scored), 4)}

    return run


def _ray_cluster_path() -> Callable[..., dict[str, Any]]:
    """The Ray engine against a running cluster: `--ray-address`, else one started here before the clock."""
    scan = _scan_path("ray")

    def run(home: Path, feed: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        from markguard.serving.scan.engines import ray_head

        if args.ray_address:
            return scan(home, feed, out, args, ray_address=args.ray_address)
        started = time.perf_counter()
        with ray_head(os.cpu_count()) as address:
            # The driver's imports, as every path's: the paths before this one imported the local
            # engine's; Ray Data's (1-2.5 s here) would otherwise be the only ones on a clock.
            import ray.data  # noqa: F401 - after ray_head, whose settings Ray reads at import

            cluster_seconds = time.perf_counter() - started
            return scan(home, feed, out, args, ray_address=address) | {
                "cluster_start_seconds": round(cluster_seconds, 2)}

    return run


# name → run(home, feed, out, args) -> {"results": {listing_id: row}, "seconds", "scored", "photos_per_second"}
PATHS: dict[str, Callable[..., dict[str, Any]]] = {
    "today": _scan_path("local", gated=False, runtime="torch"),
    "local": _scan_path("local"),
    "ray": _ray_cluster_path(),
    "ray_cold": _scan_path("ray"),
}


def _claim_auc(results: dict[str, dict], labels: dict[str, int]) -> float:
    from sklearn.metrics import roc_auc_score

    ids = [i for i in labels if results.get(i, {}).get("risk") is not None]
    return round(float(roc_auc_score([labels[i] for i in ids], [results[i]["risk"] for i in ids])), 4)


def _auc_delta_interval(risks: dict[str, float | None], reference: dict[str, float | None], labels: dict[str, int],
                        brands: dict[str, str], *, boot: int = 1000) -> dict[str, float]:
    """Claim AUC of `risks` minus `reference`'s on the same listings, with a 95% interval from draws that
    resample whole brands (the photos' own), so a brand's correlated photos move together."""
    from markguard.serving.benchmarks.scoring import by_transform
    from markguard.training.metrics import roc_auc

    ids = [i for i in labels if risks.get(i) is not None and reference.get(i) is not None]
    genuine = np.array([labels[i] == 0 for i in ids])
    a, b = -np.array([risks[i] for i in ids]), -np.array([reference[i] for i in ids])  # higher: more genuine
    table = by_transform(lambda k: roc_auc(a[k], genuine[k]) - roc_auc(b[k], genuine[k]), genuine,
                         np.array(["false claim"] * len(ids)), np.array([brands[i] for i in ids]), boot=boot)
    return {key: table["all"][key] for key in ("value", "lo", "hi")}


def main(argv: list[str] | None = None) -> int:
    from markguard.datasets.grocery import brand_of
    from markguard.serving.state.home import Home
    from markguard.vision.pipeline import STAGES

    args = get_args_parser().parse_args(argv)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        print(f"markguard: unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
        return 2
    report: dict[str, Any] = {"photos": args.photos, "ocr": not args.no_ocr, "cores": os.cpu_count(), "paths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        feed = tmp_path / "feed.jsonl"
        products, labels = build_feed(args.data, feed, photos=args.photos, seed=args.seed)
        base = Home(tmp_path / "home")
        artifact = enroll_catalog(base, args.data, products)
        base.close()
        report["model"] = artifact.tag
        report["prepare_seconds"] = _prepare_runtimes(tmp_path, args)
        runs = {}
        for name in names:
            home = tmp_path / f"home-{name}"
            shutil.copytree(tmp_path / "home", home)
            runs[name] = PATHS[name](home, feed, tmp_path / f"out-{name}", args)
        reference = runs[names[0]]["results"]
        photo_brand = {r["listing_id"]: brand_of(Path(r["image"]).parent.name)
                       for r in map(json.loads, feed.read_text().splitlines())}
        risks = {}
        for name, run in runs.items():
            results = run.pop("results")
            risks[name] = {i: results[i].get("risk") for i in labels}
            both = [i for i in labels if reference[i].get("decision") and results[i].get("decision")]
            risk_delta = [abs(reference[i]["risk"] - results[i]["risk"]) for i in both]
            report["paths"][name] = run | {
                "claim_auc": _claim_auc(results, labels),
                "decision_agreement": round(float(np.mean([reference[i]["decision"] == results[i]["decision"]
                                                           for i in both])), 4) if both else None,
                "max_risk_delta": round(max(risk_delta), 6) if risk_delta else None,
                "differing": {i: [reference[i]["decision"], results[i]["decision"], reference[i]["risk"],
                                  results[i]["risk"], labels[i]]
                              for i in both if reference[i]["decision"] != results[i]["decision"]},
            }
    paths = report["paths"]
    print(f"{'path':8}{'photos/s':>10}{'seconds':>9}{'CPU s/photo':>13}{'OCR share':>11}{'probed':>8}{'claim AUC':>11}"
          f"{'agreement':>11}{'max Δrisk':>11}")
    for name, row in paths.items():
        print(f"{name:8}{row['photos_per_second']:>10.3f}{row['seconds']:>9.1f}{row['cpu_seconds_per_photo']:>13.3f}"
              f"{row['ocr_share']:>11.3f}{row['probe_share']:>8.3f}{row['claim_auc']:>11.4f}"
              f"{row['decision_agreement']:>11.4f}{row['max_risk_delta']:>11.6f}")
    stages = [s for s in (*STAGES, "worker", "record", "driver") if any(s in r["cpu_ms_per_photo"] for r in paths.values())]
    print("process CPU ms per photo, by stage (worker: the scorers in all; driver: the one writer)")
    print(f"{'path':8}" + "".join(f"{s:>9}" for s in stages))
    for name, row in paths.items():
        print(f"{name:8}" + "".join(f"{row['cpu_ms_per_photo'].get(s, 0.0):>9.1f}" for s in stages))
    ratios = {f"{name}_vs_{names[0]}": paths[name]["photos_per_second"] / paths[names[0]]["photos_per_second"]
              for name in names[1:]}
    report["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    last = {}
    if "today" in paths and "local" in paths:
        last["speedup"] = paths["local"]["photos_per_second"] / paths["today"]["photos_per_second"]
        report["cpu_speedup"] = round(paths["today"]["cpu_seconds_per_photo"]
                                      / paths["local"]["cpu_seconds_per_photo"], 3)
        print(f"CPU seconds per photo: today {paths['today']['cpu_seconds_per_photo']:.3f}, local "
              f"{paths['local']['cpu_seconds_per_photo']:.3f} (cpu_speedup={report['cpu_speedup']:.3f})")
    if "local" in paths and "ray" in paths:
        last["ray_vs_local"] = paths["ray"]["photos_per_second"] / paths["local"]["photos_per_second"]
    if "today" in paths and "local" in paths:
        last["auc_delta"] = paths["local"]["claim_auc"] - paths["today"]["claim_auc"]
        report["auc_delta_interval"] = _auc_delta_interval(risks["local"], risks["today"], labels, photo_brand)
        lo, hi = report["auc_delta_interval"]["lo"], report["auc_delta_interval"]["hi"]
        print(f"claim AUC, local − today: {last['auc_delta']:+.4f}, 95% interval resampling the photos' brands "
              f"[{lo:+.4f}, {hi:+.4f}] (paired: the same listings on both paths)")
    report["last"] = {k: round(v, 4) for k, v in last.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"(wrote {args.out})")
    print(" ".join(f"{k}={v:.3f}" for k, v in (last or ratios).items()))
    return 0
