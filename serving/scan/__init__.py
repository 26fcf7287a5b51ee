"""Catalog scans: a feed of listings scored by worker processes or a Ray actor pool, recorded by one
writer, resumable from a per-chunk journal (`markguard scan`, `POST /scans`)."""

from markguard.serving.scan.engines import ENGINES, ScanSettings
from markguard.serving.scan.run import run_scan

__all__ = ["ENGINES", "ScanSettings", "run_scan"]
