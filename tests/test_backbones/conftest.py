"""Tiny pre-trained-model stand-ins: a 2-layer Hugging Face ViT folder (save_pretrained) and small timm models, on digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_VIT = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=10)


def save_tiny_vit(folder: Path, seed: int = 0, **overrides) -> Path:
    """A randomly initialised 2-layer ViTForImageClassification for 8x8 one-channel digits, as save_pretrained writes it."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    ViTForImageClassification(ViTConfig(**{**TINY_VIT, **overrides})).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def hf_work(tmp_path_factory):
    """A folder with a tiny ViT (vit/), a class request naming it (hf:vit), and the ViT trained on digits (trained/)."""
    from conftest import invoke, write_request

    folder = tmp_path_factory.mktemp("hf")
    save_tiny_vit(folder / "vit")
    write_request(folder, {"classes": [3]}, arch="hf:vit", kwargs={}, name="req.yaml",
                  method={"name": "rfa", "params": {"epochs": 2, "stop": "epochs"}})
    r = invoke("train", "-r", folder / "req.yaml", "-o", folder / "trained", "--epochs", "4", "--quiet")
    assert r.exit_code == 0, r.stderr
    return folder
