"""Benchmarks: each module has `get_args_parser()` and `main(argv)`; `markguard bench NAME` runs one."""
