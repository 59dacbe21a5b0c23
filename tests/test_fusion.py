import json

import pytest
import torch

from mm_classifier import MultiModalClassifier, MultiModalConfig
from mm_classifier.fusion import FUSION_TYPES, ConcatFusion, GatedFusion, build_fusion, describe

CONCEPTS = {0: "dog", 1: "beach", 2: "man"}


def tiny_config(**overrides):
    settings = dict(backbone="test_efficientnet", image_size=32, vocab_size=50, id2label=CONCEPTS, image_embed_dim=16,
                    text_embed_dim=12, word_embed_dim=8, lstm_hidden_size=8, fusion_hidden_sizes=[16])
    return MultiModalConfig(**{**settings, **overrides})


def test_concat_is_the_default_and_folders_saved_before_fusion_types_still_load(tmp_path):
    model = MultiModalClassifier(tiny_config()).eval()
    assert isinstance(model.fusion, ConcatFusion) and not list(model.fusion.parameters())
    assert model.classifier[0].in_features == 16 + 12
    # A folder of the version before fusion modules: no fusion_type in config.json, the same weight names.
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["fusion_type"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = MultiModalClassifier.from_pretrained(tmp_path).eval()
    assert loaded.config.fusion_type == "concat"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    image, text = torch.randn(2, 16), torch.randn(2, 12)
    torch.testing.assert_close(model.fusion(image, text), torch.cat([image, text], dim=1))


@pytest.mark.parametrize("fusion_type", sorted(FUSION_TYPES))
def test_every_fusion_method_trains_end_to_end_and_predicts_from_either_modality(fusion_type, tmp_path):
    model = MultiModalClassifier(tiny_config(fusion_type=fusion_type, modality_dropout=0.0)).train()
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    batch = {"pixel_values": torch.randn(2, 3, 32, 32), "input_ids": ids, "attention_mask": (ids > 0).long()}
    model(**batch, labels=torch.ones(2, 3)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    model.eval()
    assert model(pixel_values=batch["pixel_values"]).logits.shape == (2, 3)
    assert model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.shape == (2, 3)
    model.save_pretrained(tmp_path)
    loaded = MultiModalClassifier.from_pretrained(tmp_path).eval()
    assert loaded.config.fusion_type == fusion_type
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_gated_fusion_mixes_the_two_projections_with_a_per_dimension_gate():
    fusion = GatedFusion(image_dim=4, text_dim=6)
    image, text = torch.randn(3, 4), torch.randn(3, 6)
    gate = torch.sigmoid(fusion.gate(torch.cat([image, text], dim=1)))
    expected = gate * torch.tanh(fusion.image_projection(image)) + (1 - gate) * torch.tanh(fusion.text_projection(text))
    torch.testing.assert_close(fusion(image, text), expected)
    assert fusion.output_dim == 6 and gate.shape == (3, 6)


def test_an_unknown_fusion_type_is_refused_naming_the_known_ones():
    expected = r"fusion_type = 'attention' is invalid: expected one of \['concat', 'gated'\]"
    with pytest.raises(ValueError, match=expected):
        build_fusion(tiny_config(fusion_type="attention"))
    with pytest.raises(ValueError, match="MultiModalConfig.fusion_type"):
        tiny_config(fusion_type="")


def test_descriptions_name_the_method():
    assert "gate" in describe(tiny_config(fusion_type="gated"))
    assert "concatenation" in describe(tiny_config())
    assert describe(tiny_config(modality="text")).startswith("text only")
