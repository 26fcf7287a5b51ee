"""vision.runtime: the shipped embedder and mark detector on ONNX Runtime give eager PyTorch's answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from markguard.serving.registry import ensure_default_model
from markguard.serving.state.home import Home
from markguard.vision.decode import decode_image
from markguard.vision.embed import embed_images
from markguard.vision.runtime import TOLERANCE, available, int8_forward, onnx_forward

pytestmark = pytest.mark.skipif(not available(), reason="onnxruntime is not installed (the fast extra)")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    return ensure_default_model(Home(tmp_path_factory.mktemp("runtime-home")))


def _photos(grocery: Path, n: int) -> list[np.ndarray]:
    return [decode_image(p.read_bytes()) for p in sorted((grocery / "val" / "Packages").glob("*/*/*.jpg"))[:n]]


def test_embeddings_equal_eager_pytorch_within_1e_3(artifact, grocery: Path) -> None:
    model = artifact.load_embedder(fuse=True)
    size = model.config.input_size
    forward = onnx_forward(model, torch.rand(2, 3, size, size) * 2 - 1, outputs=("vectors",))
    assert forward is not None
    photos = _photos(grocery, 6)
    crops = photos + [p[: p.shape[0] // 2, : p.shape[1] // 2] for p in photos]
    eager, fast = embed_images(model, crops), embed_images(model, crops, forward=forward)
    assert fast.shape == eager.shape and np.abs(fast - eager).max() <= TOLERANCE
    assert embed_images(model, [], forward=forward).shape == (0, model.config.embedding_dim)


def test_the_detector_finds_the_same_marks(artifact, grocery: Path) -> None:
    detector = artifact.load_detector()
    photos = _photos(grocery, 6)
    eager = detector.detect(photos)
    assert detector.use_runtime("onnx") == "onnx"
    fast = detector.detect(photos)
    assert [[d.box for d in found] for found in fast] == [[d.box for d in found] for found in eager]
    assert detector.use_runtime("torch") == "torch" and detector.runtime_forward is None


def test_a_module_that_differs_stays_on_eager_pytorch() -> None:
    class Noisy(torch.nn.Module):  # a different answer on every call: no runtime can be equal to it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)

    assert onnx_forward(Noisy(), torch.zeros(2, 3, 8, 8), outputs=("y",)) is None


def test_an_exported_graph_is_cached_and_a_damaged_cache_file_is_exported_again(
        artifact, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MARKGUARD_ONNX_CACHE", str(tmp_path))
    detector = artifact.load_detector()
    probe = torch.rand(2, 3, 64, 64) * 2 - 1
    first = onnx_forward(detector, probe, outputs=("logits", "log_distances"))
    cached = list(tmp_path.glob("*.onnx"))
    assert first is not None and len(cached) == 1
    again = onnx_forward(detector, probe, outputs=("logits", "log_distances"))  # read from the cache
    assert again is not None and np.allclose(again(probe)[0].numpy(), first(probe)[0].numpy(), atol=TOLERANCE)
    whole = cached[0].read_bytes()
    cached[0].write_bytes(whole[:1000])  # a truncated graph is exported again
    mended = onnx_forward(detector, probe, outputs=("logits", "log_distances"))
    assert mended is not None and np.allclose(mended(probe)[0].numpy(), first(probe)[0].numpy(), atol=TOLERANCE)
    assert cached[0].stat().st_size == len(whole)  # the cache file is whole again


def test_easyocr_craft_on_onnx_runtime_reads_the_same_lines(grocery: Path) -> None:
    from markguard.vision.ocr import EasyOcrEngine

    eager, fast = EasyOcrEngine(threads=1), EasyOcrEngine(threads=1)
    assert fast.use_runtime("onnx") == "onnx"
    for photo in _photos(grocery, 3):
        assert [(line.text, line.box) for line in fast.read(photo, budget_ms=60_000)] == \
            [(line.text, line.box) for line in eager.read(photo, budget_ms=60_000)]


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))


def _close(exact: tuple[np.ndarray, ...], approximate: tuple[np.ndarray, ...]) -> bool:
    return all(np.abs(a - b).max() <= 0.05 * np.abs(a).max() for a, b in zip(exact, approximate, strict=True))


def test_an_int8_graph_is_quantized_checked_cached_and_mended(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import onnx

    monkeypatch.setenv("MARKGUARD_ONNX_CACHE", str(tmp_path))
    module, rng = _tiny(), torch.Generator().manual_seed(1)
    calibration = [torch.rand(1, 3, 16, 24, generator=rng) * 2 - 1 for _ in range(4)]
    checks = [torch.rand(1, 3, 20, 20, generator=rng) * 2 - 1]
    kwargs = dict(outputs=("y",), calibration=calibration, checks=checks, spatial={"x": (2, 3), "y": (2, 3)})
    forward = int8_forward(module, torch.zeros(2, 3, 8, 8), agree=_close, **kwargs)
    assert forward is not None
    (quantized,) = tmp_path.glob("*.int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(quantized).graph.node}
    x = checks[0]
    with torch.no_grad():
        assert _close((module(x).numpy(),), (forward(x)[0].numpy(),)) and not np.array_equal(module(x).numpy(), forward(x)[0].numpy())
    whole = quantized.read_bytes()
    quantized.write_bytes(whole[:500])  # a damaged cache file is quantized again
    assert int8_forward(module, torch.zeros(2, 3, 8, 8), agree=_close, **kwargs) is not None
    assert quantized.read_bytes() == whole  # quantization is deterministic
    # an int8 graph that fails the caller's agreement test is never used
    assert int8_forward(module, torch.zeros(2, 3, 8, 8), agree=lambda exact, approximate: False, **kwargs) is None
    # a graph that passed is recorded as checked: loaded again, it is not checked again; changed, it is
    calls = []

    def counted(exact: tuple[np.ndarray, ...], approximate: tuple[np.ndarray, ...]) -> bool:
        calls.append(1)
        return _close(exact, approximate)

    assert int8_forward(module, torch.zeros(2, 3, 8, 8), agree=counted, **kwargs) is not None and calls == [1]
    assert int8_forward(module, torch.zeros(2, 3, 8, 8), agree=counted, **kwargs) is not None and calls == [1]
    graph = onnx.load(quantized)
    graph.doc_string = "changed"
    onnx.save(graph, quantized)
    assert int8_forward(module, torch.zeros(2, 3, 8, 8), agree=counted, **kwargs) is not None and calls == [1, 1]


def test_the_int8_craft_probe_finds_the_text_boxes_eager_craft_finds(grocery: Path) -> None:
    from markguard.datasets.grocery import brand_of
    from markguard.vision.ocr import EasyOcrEngine, _craft_boxes_agree, _craft_inputs
    from markguard.vision.text import match_wordmarks

    engine = EasyOcrEngine(threads=1)
    assert engine.use_runtime("onnx") == "onnx"
    engine.prepare()  # what a bench calls before its clock: the int8 CRAFT is built, not left to the first probe
    approximate, net = engine._approximate, engine._craft_net()
    assert approximate is not None and approximate is engine._approximate_craft()
    for x in _craft_inputs(["text", "page"]) + _craft_inputs(["astronaut"], words=True):
        with torch.no_grad():
            exact = tuple(y.numpy() for y in net(x))
        assert _craft_boxes_agree(exact, tuple(y.numpy() for y in approximate(x)))
    # what the probe decides: whether a wordmark (any grocery brand's name) is read
    marks = {brand_of(p.name): [brand_of(p.name)] for p in (grocery / "iconic" / "Packages").glob("*/*")}
    hits = {}
    for approximate in (False, True):
        hits[approximate] = [[(h.brand, h.match) for h in match_wordmarks(
            [line.text for line in engine.probe(photo, approximate=approximate)], brand=None, wordmarks=marks)]
            for photo in _photos(grocery, 12)]
    assert any(hits[False]) and hits[True] == hits[False]
    assert engine.use_runtime("torch") == "torch" and engine._approximate is None  # eager again: no int8 copy


def test_craft_boxes_that_differ_do_not_agree() -> None:
    from markguard.vision.ocr import _craft_boxes_agree

    y = np.zeros((1, 64, 64, 2), np.float32)
    y[0, 10:16, 8:40] = 0.9  # one word
    moved = np.roll(y, 20, axis=1)
    assert _craft_boxes_agree((y,), (y.copy(),)) and _craft_boxes_agree((np.zeros_like(y),), (np.zeros_like(y),))
    assert not _craft_boxes_agree((y,), (moved,)) and not _craft_boxes_agree((y,), (np.zeros_like(y),))


def test_scorers_starting_together_quantize_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import threading

    import onnxruntime.quantization as quantization

    monkeypatch.setenv("MARKGUARD_ONNX_CACHE", str(tmp_path))
    calls, real = [], quantization.quantize_static

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantization, "quantize_static", counted)
    module, rng = _tiny(), torch.Generator().manual_seed(2)
    calibration = [torch.rand(1, 3, 16, 16, generator=rng) for _ in range(3)]
    assert onnx_forward(module, torch.zeros(2, 3, 8, 8), outputs=("y",), spatial={"x": (2, 3), "y": (2, 3)})  # exported once
    got = []
    threads = [threading.Thread(target=lambda: got.append(int8_forward(
        module, torch.zeros(2, 3, 8, 8), outputs=("y",), calibration=calibration, checks=calibration[:1], agree=_close,
        spatial={"x": (2, 3), "y": (2, 3)}))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(f is not None for f in got) and len(calls) == 1
