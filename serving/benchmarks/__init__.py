"""Benchmarks of the whole service path (catalog, engine, index); `markguard bench NAME` runs them."""
