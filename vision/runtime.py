"""vision: runtime — a network's forward pass on ONNX Runtime instead of eager PyTorch, where it is installed
and gives the same answer.

On this project's 2-core CPUs ONNX Runtime ran the EfficientNet-Lite0 embedder 2.7 times faster than
eager PyTorch (20 ms a 224 px crop against 55, one thread each) with outputs equal within 4e-7. A
module is exported in memory when it is loaded, and kept on ONNX Runtime only if its outputs on a
probe batch equal eager PyTorch's within `TOLERANCE`; otherwise (or without `onnxruntime`, the
`fast` extra) the eager module runs, so results never depend on which runtime is installed.

`int8_forward` is the one exception, for callers that only need an approximate answer (the OCR gate's
probe, which decides whether a photo is read, never what it reads): the same graph with int8 weights
and activations (ONNX Runtime's static quantization), 3.3–3.5 times faster for EasyOCR's CRAFT, kept
only where the caller's own agreement test passes against eager PyTorch.

Graphs cached between processes are model files outside the home: each is written with an HMAC-SHA256 of
its bytes (`.sig` beside it) under this process's cache key (`sign_cache_with`; serving passes the home's
secret), and loaded only from the bytes that were read and verified; any other file is deleted and built
again. The int8 `.checked` record is signed the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import logging
import os
import secrets
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TOLERANCE", "RUNTIMES", "onnx_forward", "int8_forward", "available", "cache_dir", "sign_cache_with",
           "limit_threads"]

TOLERANCE = 1e-3  # largest absolute difference from eager PyTorch on the probe batch
RUNTIMES = ("onnx", "torch")
_OPSET = 17
_log = logging.getLogger(__name__)
_cache_key = secrets.token_bytes(32)  # this process's own until `sign_cache_with`: no other process's graph is trusted

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def limit_threads(threads: int) -> None:
    """Every thread pool of this process's numerical libraries to `threads`: torch's intra-op pool,
    OpenCV's, FAISS's OpenMP, and every OpenBLAS and OpenMP pool already loaded (numpy's, FAISS's and
    torch's each start one thread per core at import, whatever torch was told). Processes sharing
    the cores call it after their imports, and again after loading anything that brings a new pool."""
    import cv2
    import faiss
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    faiss.omp_set_num_threads(threads)
    threadpool_limits(limits=threads)


def sign_cache_with(key: bytes) -> None:
    """Sign and verify this process's cached graphs with `key`, a secret the cache's owner holds (serving: the
    home's), so a graph one process cached is loaded by the next that holds the same key. Until it is called,
    a random key of this process's own: graphs cached by other processes are built again, never trusted."""
    global _cache_key
    if len(key) < 16:
        raise ValueError("an ONNX cache key needs at least 16 bytes")
    _cache_key = bytes(key)


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
    module = module.eval()
    model, cached = _exported(module, probe, outputs=outputs, spatial=spatial or {})
    if model is None:
        return None
    try:
        session = _session(model, threads)
    except Exception as exc:  # noqa: BLE001 - an unreadable graph: a damaged cache file is exported again
        if cached is not None:
            _discard(cached)
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


def _session(model: bytes, threads: int | None) -> Any:
    """An ONNX Runtime CPU session of `model` on `threads` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def int8_forward(module: torch.nn.Module, probe: torch.Tensor, *, outputs: Sequence[str],
                 calibration: Sequence[torch.Tensor], checks: Sequence[torch.Tensor],
                 agree: Callable[[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], bool],
                 threads: int | None = None, spatial: Mapping[str, Sequence[int]] | None = None) -> Forward | None:
    """`module`'s forward run by ONNX Runtime on an int8 copy of its graph: weights quantized per
    channel, activations over the ranges they take on `calibration` (inputs of any size, one at a
    time), in QDQ form. None when onnxruntime or its quantizer is missing, export or quantization
    fails, or `agree(eager outputs, int8 outputs)` is False for any of `checks`: the caller then keeps
    its exact forward. The quantized graph is cached beside the exported one, keyed by that graph, the
    calibration inputs and the onnxruntime version. A graph that passed the checks is recorded as
    checked (a signed digest of it, the checks and `agree`'s name, `.checked` beside it); a cached graph
    that does not match the record is checked again (eager PyTorch on the checks costs seconds a process)."""
    if not available():
        return None
    module = module.eval()
    model, _ = _exported(module, probe, outputs=outputs, spatial=spatial or {})
    if model is None:
        return None
    quantized, path, cached = _quantized(model, calibration)
    if quantized is None:
        return None
    try:
        session = _session(quantized, threads)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is quantized again; else keep the exact forward
        if cached:
            _discard(path)
            return int8_forward(module, probe, outputs=outputs, calibration=calibration, checks=checks, agree=agree,
                                threads=threads, spatial=spatial)
        _log.warning("ONNX Runtime could not load the int8 graph (%s); keeping the exact forward", exc)
        return None

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(y) for y in session.run(None, {"x": x.numpy()}))

    record = hashlib.sha256(quantized + f"{agree.__module__}.{agree.__qualname__}".encode())
    for x in checks:
        record.update(repr(tuple(x.shape)).encode())
        record.update(x.detach().cpu().contiguous().numpy().tobytes())
    checked = path.with_suffix(".checked") if path is not None else None
    if checked is not None and _verified(checked, record.digest(), _read_or_none(checked)):
        return forward
    for x in checks:
        with torch.no_grad():
            expected = module(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        if not agree(tuple(e.numpy() for e in expected), tuple(g.numpy() for g in forward(x))):
            _log.warning("the int8 graph disagrees with eager PyTorch on a check input; keeping the exact forward")
            return None
    if checked is not None:
        try:
            _write_whole(checked, _signature(checked, record.digest()))
        except OSError as exc:
            _log.warning("ONNX cache %s not written (%s)", checked, exc)
    return forward


def _quantized(model: bytes, calibration: Sequence[torch.Tensor]) -> tuple[bytes | None, Path | None, bool]:
    """(the int8 QDQ graph of `model`, calibrated on `calibration` (min-max ranges), its cache file or
    None, whether it was read from there): from the cache when there (`cache_dir()`), else quantized
    now (seconds a network) and cached."""
    try:
        import onnxruntime as ort
        import onnxruntime.quantization  # noqa: F401 - the quantizer, used by _quantize
    except ImportError:
        return None, None, False
    reduce_range = not _int8_dot_products()
    key = hashlib.sha256(b"int8-qdq-minmax-per-channel-v1" + ort.__version__.encode() + bytes([reduce_range]) + model)
    for x in calibration:
        key.update(repr(tuple(x.shape)).encode())
        key.update(x.detach().cpu().contiguous().numpy().tobytes())
    folder = cache_dir()
    path = folder / f"{key.hexdigest()}.int8.onnx" if folder is not None else None
    with _one_process(path):  # the scorers of a scan starting together: one quantizes, the rest read it
        cached = _read_signed(path)
        if cached is not None:
            return cached, path, True
        return _quantize(model, calibration, path, reduce_range=reduce_range), path, False


@contextlib.contextmanager
def _one_process(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `path`'s lock file (none without a cache, or where it cannot be made)."""
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _int8_dot_products() -> bool:
    """Whether this CPU has VNNI (int8 dot products that never saturate). Without it, ONNX Runtime's
    u8·s8 kernels can saturate 16-bit sums, so weights keep 7 bits (`reduce_range`), as its docs advise."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _quantize(model: bytes, calibration: Sequence[torch.Tensor], path: Path | None, *,
              reduce_range: bool) -> bytes | None:
    """Quantize `model` now (seconds a network) and cache it at `path`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"x": x.detach().cpu().numpy().astype(np.float32)} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory(prefix="markguard-int8-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        source.write_bytes(model)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer advises pre-processing on the root logger: not needed here
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(source, target, Inputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                                reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - any quantizer failure means: keep the exact forward
            _log.warning("int8 quantization failed (%s); keeping the exact forward", exc)
            return None
        finally:
            root.setLevel(level)
        quantized = target.read_bytes()
    _write_signed(path, quantized)
    return quantized


def _write_whole(path: Path, data: bytes) -> None:
    """Written whole, then renamed: a scorer never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(f".{os.getpid()}.tmp")
    tmp_path.write_bytes(data)
    os.replace(tmp_path, path)


def _signature(path: Path, data: bytes) -> bytes:
    """`<key id> <HMAC-SHA256 of path's name and data>` under this process's cache key: the name is signed
    too, so a signed graph moved into another graph's place does not verify."""
    key = _cache_key
    key_id = hashlib.sha256(b"markguard-onnx-cache-key-id" + key).hexdigest()[:16]
    tag = hmac.new(key, path.name.encode() + b"\0" + data, hashlib.sha256).hexdigest()
    return f"{key_id} {tag}".encode()


def _verified(record: Path, data: bytes, signature: bytes | None) -> bool:
    return signature is not None and hmac.compare_digest(signature.strip(), _signature(record, data))


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _read_signed(path: Path | None) -> bytes | None:
    """`path`'s bytes, read once, when its `.sig` is this process's cache key's signature of exactly them
    (the caller loads these bytes, never the file again); else None, the file deleted to be built again."""
    if path is None or not path.is_file():
        return None
    data, signature = _read_or_none(path), _read_or_none(path.with_suffix(".sig"))
    if data is not None and _verified(path, data, signature):
        return data
    if signature is not None and signature.split(b" ")[0] == _signature(path, b"").split(b" ")[0]:
        _log.warning("ONNX cache %s does not match its signature (changed since it was written); "
                     "deleting it and building it again", path)
    else:
        _log.info("ONNX cache %s is not signed with this process's cache key; building it again", path)
    _discard(path)
    return None


def _write_signed(path: Path | None, data: bytes) -> None:
    """`data` cached at `path`, then its signature beside it (`_read_signed`); readers hold `_one_process`."""
    if path is None:
        return
    try:
        _write_whole(path, data)
        _write_whole(path.with_suffix(".sig"), _signature(path, data))
    except OSError as exc:
        _log.warning("ONNX cache %s not written (%s)", path, exc)


def _discard(path: Path) -> None:
    """A cached graph, its signature and (int8) its `.checked` record, gone: none of them is trusted again."""
    for stale in (path, path.with_suffix(".sig"), path.with_suffix(".checked")):
        stale.unlink(missing_ok=True)


def cache_dir() -> Path | None:
    """Where exported graphs are kept between processes (`MARKGUARD_ONNX_CACHE`; empty: none), by default
    `~/.cache/markguard/onnx`. A cached graph is loaded only when signed with this process's cache key
    (`sign_cache_with`), and used only after the same check against eager PyTorch."""
    value = os.environ.get("MARKGUARD_ONNX_CACHE")
    if value is not None:
        return Path(value) if value else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "markguard" / "onnx"


def _exported(module: torch.nn.Module, probe: torch.Tensor, *, outputs: Sequence[str],
              spatial: Mapping[str, Sequence[int]]) -> tuple[bytes | None, Path | None]:
    """(the ONNX graph of `module`, the cache file it was read from or None): exported once per weights,
    shapes and torch version, then read from `cache_dir()` where its signature holds (each scorer of a
    scan would otherwise export it again: 1–5 CPU s a network)."""
    axes = {name: {0: "n"} | {a: f"{name}_{a}" for a in spatial.get(name, ())} for name in ("x", *outputs)}
    key = hashlib.sha256(repr((type(module).__qualname__, tuple(probe.shape[1:]), tuple(outputs), axes,
                               torch.__version__, _OPSET)).encode())
    for name, tensor in module.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    folder = cache_dir()
    path = folder / f"{key.hexdigest()}.onnx" if folder is not None else None
    with _one_process(path):  # the scorers of a scan starting together: one exports, the rest read it
        cached = _read_signed(path)
        if cached is not None:
            return cached, path
        return _export(module, probe, outputs=outputs, axes=axes, path=path), None


def _export(module: torch.nn.Module, probe: torch.Tensor, *, outputs: Sequence[str],
            axes: dict[str, dict[int, str]], path: Path | None) -> bytes | None:
    """Export `module` now (1–5 CPU s a network) and cache it, signed, at `path`."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (probe[:1],), buffer, input_names=["x"], output_names=list(outputs),
                              dynamic_axes=axes, opset_version=_OPSET, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - any export failure means: stay on eager PyTorch
        _log.warning("ONNX export failed (%s); running eager PyTorch", exc)
        return None
    _write_signed(path, buffer.getvalue())
    return buffer.getvalue()
