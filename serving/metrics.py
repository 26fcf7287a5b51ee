"""markguard's own Prometheus metrics, served with BentoML's on `/metrics`.

Plain `prometheus_client` metrics: BentoML sets PROMETHEUS_MULTIPROC_DIR before it starts the workers,
so each worker writes its values to that folder and `/metrics` adds up every worker's counts.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["LISTINGS_SCORED", "DECISIONS", "OCR_SECONDS", "INDEX_SIZE", "EMBED_BATCH"]

LISTINGS_SCORED = Counter(
    "markguard_listings_scored", "Listing photos scored", labelnames=["route"])
DECISIONS = Counter(
    "markguard_decisions", "Decisions by brand (the claimed or matched brand)",
    labelnames=["brand", "decision"])
OCR_SECONDS = Histogram(
    "markguard_ocr_seconds", "Seconds reading one photo's text (the engine's on_ocr_seconds; cached photos not counted)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0))
INDEX_SIZE = Gauge(
    "markguard_index_size", "Reference vectors in the loaded index",
    multiprocess_mode="max")
EMBED_BATCH = Histogram(
    "markguard_embed_batch_size", "Crops per forward pass of the batched embedder",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))

