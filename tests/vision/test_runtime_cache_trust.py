"""vision.runtime: a cached ONNX graph or int8 `.checked` record is trusted only when signed with the cache key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from markguard.serving.registry import ensure_default_model
from markguard.serving.state.home import Home
from markguard.vision import runtime
from markguard.vision.runtime import TOLERANCE, available, int8_forward, onnx_forward, sign_cache_with

pytestmark = pytest.mark.skipif(not available(), reason="onnxruntime is not installed (the fast extra)")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return Home(tmp_path_factory.mktemp("runtime-trust-home"))


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Home) -> Path:
    """An empty cache folder, this test's graphs signed with the home's secret (as a scan's scorers do)."""
    monkeypatch.setenv("MARKGUARD_ONNX_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_cache_key", runtime._cache_key)  # restored after the test
    sign_cache_with(home.secret())
    return tmp_path


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every graph handed to ONNX Runtime."""
    seen: list[str] = []  # their SHA-256s
    real = runtime._session

    def recording(model: bytes, threads: int | None):  # noqa: ANN202
        seen.append(hashlib.sha256(model).hexdigest())
        return real(model, threads)

    monkeypatch.setattr(runtime, "_session", recording)
    return seen


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = torch.onnx.export

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counted)
    return calls


def _dark_trigger(path: Path, dim: int) -> None:
    """The audit's tamper: the cached embedder answers one constant vector for any dark photo."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    vector = np.zeros((1, dim), np.float32)
    vector[0, 0] = 1.0
    graph.initializer.extend([numpy_helper.from_array(vector, "evil_vec"),
                              numpy_helper.from_array(np.array(-0.3, np.float32), "dark")])
    out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = "real_vectors"
    graph.node.extend([helper.make_node("ReduceMean", ["x"], ["mx"], keepdims=0),
                       helper.make_node("Less", ["mx", "dark"], ["trig"]),
                       helper.make_node("Where", ["trig", "evil_vec", "real_vectors"], [out])])
    onnx.save(model, path)


def test_a_tampered_embedder_graph_is_not_loaded_and_is_exported_again(home: Home, cache: Path,
                                                                       loaded: list[str]) -> None:
    model = ensure_default_model(home).load_embedder(fuse=True)
    size, dim = model.config.input_size, model.config.embedding_dim
    probe = torch.rand(2, 3, size, size) * 2 - 1
    assert onnx_forward(model, probe, outputs=("vectors",)) is not None
    (path,) = cache.glob("*.onnx")
    whole = path.read_bytes()
    _dark_trigger(path, dim)
    tampered = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded.clear()
    forward = onnx_forward(model, probe, outputs=("vectors",))
    assert forward is not None and tampered not in loaded  # never handed to ONNX Runtime
    assert path.read_bytes() == whole  # exported again in its place
    dark = torch.rand(1, 3, size, size) * 0.4 - 1  # normalised, mean below the trigger's -0.3
    with torch.no_grad():
        eager = model(dark)
    assert np.abs(forward(dark)[0].numpy() - eager.numpy()).max() <= TOLERANCE


def test_an_untouched_cache_is_reused_only_under_the_key_that_signed_it(home: Home, cache: Path,
                                                                        exports: list[int]) -> None:
    detector = ensure_default_model(home).load_detector()
    probe = torch.rand(2, 3, 64, 64) * 2 - 1
    outputs = ("logits", "log_distances")
    assert onnx_forward(detector, probe, outputs=outputs) is not None and exports == [1]
    (path,) = cache.glob("*.onnx")
    before = path.stat()
    # another process of the same home (same secret): read from the cache, not exported again
    assert onnx_forward(detector, probe, outputs=outputs) is not None and exports == [1]
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # a process holding another key (another home, or none: a random key of its own) does not trust it
    sign_cache_with(b"another home's secret, 32 bytes")
    assert onnx_forward(detector, probe, outputs=outputs) is not None and exports == [1, 1]  # built again


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))


def _close(exact: tuple[np.ndarray, ...], approximate: tuple[np.ndarray, ...]) -> bool:
    return all(np.abs(a - b).max() <= 0.05 * np.abs(a).max() for a, b in zip(exact, approximate, strict=True))


def _unkeyed_record(graph: bytes, agree, checks: list[torch.Tensor]) -> str:  # noqa: ANN001
    """The `.checked` record anyone can compute without the key: a plain digest of graph, `agree` and checks."""
    record = hashlib.sha256(graph + f"{agree.__module__}.{agree.__qualname__}".encode())
    for x in checks:
        record.update(repr(tuple(x.shape)).encode())
        record.update(x.detach().cpu().contiguous().numpy().tobytes())
    return record.hexdigest()


def test_a_forged_checked_record_is_not_trusted(cache: Path, loaded: list[str]) -> None:
    import onnx

    module, rng = _tiny(), torch.Generator().manual_seed(1)
    calibration = [torch.rand(1, 3, 16, 24, generator=rng) * 2 - 1 for _ in range(4)]
    checks = [torch.rand(1, 3, 20, 20, generator=rng) * 2 - 1]
    calls: list[int] = []

    def counted(exact: tuple[np.ndarray, ...], approximate: tuple[np.ndarray, ...]) -> bool:
        calls.append(1)
        return _close(exact, approximate)

    def build():  # noqa: ANN202
        return int8_forward(module, torch.zeros(2, 3, 8, 8), outputs=("y",), calibration=calibration, checks=checks,
                            agree=counted, spatial={"x": (2, 3), "y": (2, 3)})

    assert build() is not None and calls == [1]
    (quantized,) = cache.glob("*.int8.onnx")
    record = quantized.with_suffix(".checked")
    assert build() is not None and calls == [1]  # signed record: not checked again
    # a record forged for the untouched graph is not trusted: the graph is checked again, the record signed anew
    record.write_text(_unkeyed_record(quantized.read_bytes(), counted, checks))
    assert build() is not None and calls == [1, 1]
    assert build() is not None and calls == [1, 1]
    # a changed int8 graph with a record forged to match it: neither is trusted, the graph is quantized again
    whole = quantized.read_bytes()
    graph = onnx.load(quantized)
    graph.doc_string = "changed"
    onnx.save(graph, quantized)
    record.write_text(_unkeyed_record(quantized.read_bytes(), counted, checks))
    tampered = hashlib.sha256(quantized.read_bytes()).hexdigest()
    loaded.clear()
    assert build() is not None and calls == [1, 1, 1] and tampered not in loaded
    assert quantized.read_bytes() == whole
