"""LoRA target selection on transformer backbones: attention projections, MLP, last blocks, and each family's default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearn_tool import lora
from unlearn_tool.errors import MethodError
from unlearn_tool.models import MLP, SmallCNN

from .conftest import TINY_VIT


def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(**TINY_VIT))


def timm_deit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=8, patch_size=2, depth=2,
                             embed_dim=32, num_heads=2)


def torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=8, patch_size=2, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)


def short(names: list[str]) -> set[str]:
    """Layer names without the block path: the projection kinds a selection adapts."""
    return {n.rsplit(".", 1)[-1] for n in names}


# transformers 5 names the projections q/k/v/o_proj and mlp.fc1/fc2; transformers 4 query/key/value/dense and dense
ATTENTION = {"hf-vit": ({"q_proj", "k_proj", "v_proj", "o_proj"}, {"query", "key", "value", "dense"}), "timm-deit": ({"qkv", "proj"},)}
MLPS = {"hf-vit": ({"fc1", "fc2"}, {"dense"}), "timm-deit": ({"fc1", "fc2"},)}


@pytest.mark.parametrize("name, build", [("hf-vit", hf_vit), ("timm-deit", timm_deit)], ids=["hf-vit", "timm-deit"])
def test_attention_mlp_and_blocks(name, build):
    model = build().eval()
    blocks = lora.transformer_blocks(model)
    assert len(blocks) == 2
    att, mlps = lora.select_layers(model, "attention"), lora.select_layers(model, "mlp")
    assert short(att) in ATTENTION[name] and short(mlps) in MLPS[name]
    assert not set(att) & set(mlps)
    assert set(lora.select_layers(model, "blocks:1")) == {n for n in att + mlps if n.startswith(blocks[-1] + ".")}
    head = lora.select_layers(model, "head")
    assert lora.select_layers(model, ["attention", "head"]) == [n for n in lora.lora_capable_layers(model) if n in set(att) | set(head)]
    # the projections take part in the forward pass: a non-zero adapter there changes the output
    adapted = lora.inject(model, att, rank=2, alpha=2.0)
    for _, layer in lora.lora_layers(adapted):
        nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(2, 1 if name == "hf-vit" else 3, 8, 8)
    out = (lambda m: m(pixel_values=x).logits) if name == "hf-vit" else (lambda m: m(x))
    with torch.no_grad():
        assert not torch.allclose(out(model), out(adapted))


def test_multihead_attention_projections_are_not_adaptable():
    model = torchvision_vit()
    assert lora.family(model) == "transformer"
    with pytest.raises(MethodError, match="match no adaptable layer"):
        lora.select_layers(model, "attention")  # owned by nn.MultiheadAttention, which reads the weights directly
    assert lora.select_layers(model, "mlp")
    assert lora.select_layers(model, "auto")  # falls back to what can be adapted


@pytest.mark.parametrize("build, family", [(hf_vit, "transformer"), (timm_deit, "transformer"), (lambda: SmallCNN(1, 10), "conv"),
                                           (MLP, "mlp")], ids=["hf-vit", "timm-deit", "cnn", "mlp"])
def test_auto_is_the_family_default(build, family):
    model = build()
    assert lora.family(model) == family
    assert lora.select_layers(model, "auto") == lora.select_layers(model, lora.DEFAULT_TARGETS[family])


def test_keywords_are_checked_when_parameters_are_read():
    for bad in ("blocks:0", "blocks:x", "last:-1"):
        with pytest.raises(ValueError):
            lora.check_target_spec(bad)
    for good in ("auto", "attention", "mlp", "blocks:2", ["attention", "head"]):
        assert lora.check_target_spec(good) == good
    with pytest.raises(MethodError, match="no adaptable layer"):
        lora.select_layers(SmallCNN(1, 10), "attention")
