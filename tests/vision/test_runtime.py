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
from markguard.vision.runtime import TOLERANCE, available, onnx_forward

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
