"""vision: runtime — a network's forward pass on ONNX Runtime instead of eager PyTorch, where it is installed
and gives the same answer.

On this project's 2-core CPUs ONNX Runtime ran the EfficientNet-Lite0 embedder 2.7 times faster than
eager PyTorch (20 ms a 224 px crop against 55, one thread each) with outputs equal within 4e-7. A
module is exported in memory when it is loaded, and kept on ONNX Runtime only if its outputs on a
probe batch equal eager PyTorch's within `TOLERANCE`; otherwise (or without `onnxruntime`, the
`fast` extra) the eager module runs, so results never depend on which runtime is installed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["TOLERANCE", "RUNTIMES", "onnx_forward", "available", "cache_dir"]

TOLERANCE = 1e-3  # largest absolute difference from eager PyTorch on the probe batch
RUNTIMES = ("onnx", "torch")
_OPSET = 17
_log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def onnx_forward(module: torch.nn.Module, probe: torch.Tensor, *, outputs: Sequence[str],
                 threads: int | None = None, spatial: Mapping[str, Sequence[int]] | None = None) -> Forward | None:
    """`module`'s forward (N, ...) → tuple of tensors, run by ONNX Runtime; None when onnxruntime is
    missing, the export fails, or the outputs on `probe` differ from eager PyTorch's by more than
    `TOLERANCE` (the caller then keeps the eager module). The batch axis is dynamic; `spatial` names,
    for the input `x` and each output, further axes of any size (a detector that takes any photo size)."""
    if not available():
        return None
    import onnxruntime as ort

    module = module.eval()
    model, cached = _exported(module, probe, outputs=outputs, spatial=spatial or {})
    if model is None:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - an unreadable graph: a damaged cache file is exported again
        if cached is not None:
            cached.unlink(missing_ok=True)
            return onnx_forward(module, probe, outputs=outputs, threads=threads, spatial=spatial)
        _log.warning("ONNX Runtime could not load the graph (%s); running eager PyTorch", exc)
        return None

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not len(x):
            with torch.no_grad():
                out = module(x)
            return out if isinstance(out, tuple) else (out,)
        return tuple(torch.from_numpy(y) for y in session.run(None, {"x": x.numpy()}))

    with torch.no_grad():
        expected = module(probe)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = forward(probe)
    worst = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(expected, got, strict=True))
    if worst > TOLERANCE:
        _log.warning("ONNX Runtime differs from eager PyTorch by %.2g; running eager PyTorch", worst)
        return None
    return forward


def cache_dir() -> Path | None:
    """Where exported graphs are kept between processes (`MARKGUARD_ONNX_CACHE`; empty: none), by default
    `~/.cache/markguard/onnx`. A cached graph is used only after the same check against eager PyTorch."""
    value = os.environ.get("MARKGUARD_ONNX_CACHE")
    if value is not None:
        return Path(value) if value else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "markguard" / "onnx"


def _exported(module: torch.nn.Module, probe: torch.Tensor, *, outputs: Sequence[str],
              spatial: Mapping[str, Sequence[int]]) -> tuple[bytes | None, Path | None]:
    """(the ONNX graph of `module`, the cache file it was read from or None): exported once per weights,
    shapes and torch version, then read from `cache_dir()` (each scorer of a scan would otherwise
    export it again: 1–5 CPU s a network)."""
    axes = {name: {0: "n"} | {a: f"{name}_{a}" for a in spatial.get(name, ())} for name in ("x", *outputs)}
    key = hashlib.sha256(repr((type(module).__qualname__, tuple(probe.shape[1:]), tuple(outputs), axes,
                               torch.__version__, _OPSET)).encode())
    for name, tensor in module.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    folder = cache_dir()
    path = folder / f"{key.hexdigest()}.onnx" if folder is not None else None
    if path is not None and path.is_file():
        return path.read_bytes(), path
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (probe[:1],), buffer, input_names=["x"], output_names=list(outputs),
                              dynamic_axes=axes, opset_version=_OPSET, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - any export failure means: stay on eager PyTorch
        _log.warning("ONNX export failed (%s); running eager PyTorch", exc)
        return None, None
    if path is not None:
        try:  # written whole, then renamed: a scorer never reads half a graph
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        except OSError as exc:
            _log.warning("ONNX cache %s not written (%s)", path, exc)
    return buffer.getvalue(), None
