"""Tiny real datasets (built with `markguard.datasets`) and one tiny training run shared by the tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Two brands, two products each: look-alike products of the same brand, as in the full set.
TINY_PRODUCTS = {
    "Juice": ("Bravo-Apple-Juice", "Bravo-Orange-Juice"),
    "Soy-Milk": ("Alpro-Fresh-Soy-Milk", "Alpro-Shelf-Soy-Milk"),
}


@pytest.fixture(scope="session")
def tiny_grocery(grocery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grocery manifest of 4 products (4 train, 2 val photos each, plus the iconic images)."""
    from markguard.datasets.grocery import GroceryOptions, build_grocery

    src = tmp_path_factory.mktemp("grocery-src")
    for category, products in TINY_PRODUCTS.items():
        for product in products:
            for split, count in (("train", 4), ("val", 2)):
                dest = src / split / "Packages" / category / product
                dest.mkdir(parents=True)
                for photo in sorted((grocery / split / "Packages" / category / product).glob("*.jpg"))[:count]:
                    shutil.copy(photo, dest / photo.name)
            dest = src / "iconic" / "Packages" / category / product
            dest.mkdir(parents=True)
            shutil.copy(grocery / "iconic" / "Packages" / category / product / f"{product}_Iconic.jpg", dest)
    out = tmp_path_factory.mktemp("grocery") / "build"
    build_grocery(out, source=src, opts=GroceryOptions(), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_synth(grocery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic listing photos of 16 brands, 3 genuine + 3 counterfeit photos each, 96 px."""
    from markguard.datasets.synth import SynthOptions, build_synth

    out = tmp_path_factory.mktemp("synth") / "build"
    opts = SynthOptions(brands=16, per_brand=3, size=96, val_fraction=0.25, test_fraction=0.25, seed=0)
    build_synth(out, data_root=grocery.parent, opts=opts, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_grocery: Path, tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny epoch through `markguard train`'s own code path (configs/tiny.json)."""
    from markguard.training.train import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    argv = ["--config", "tiny", "--set", f"data.grocery={tiny_grocery}", "--set", f"data.synth={tiny_synth}",
            "--set", "data.max_train_images=0", "--out", str(run), "--bentoml-home", str(run / "bentoml"), "--quiet"]
    assert main(argv) == 0
    return run
