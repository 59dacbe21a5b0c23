import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

from mm_classifier import MMClassifierError, MultiModalClassifier, MultiModalConfig

CONCEPTS = {0: "dog", 1: "beach", 2: "man"}


def tiny_config(**overrides):
    settings = dict(
        backbone="test_efficientnet", image_size=32, vocab_size=50, id2label=CONCEPTS, image_embed_dim=16,
        text_embed_dim=16, word_embed_dim=8, lstm_hidden_size=8, fusion_hidden_sizes=[16],
    )
    settings.update(overrides)
    return MultiModalConfig(**settings)


def inputs(batch=3):
    torch.manual_seed(0)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [0, 0, 0, 0]])[:batch]
    return {"pixel_values": torch.randn(batch, 3, 32, 32), "input_ids": ids, "attention_mask": (ids > 0).long()}


def test_config_defaults_validation_and_auto_registration():
    config = AutoConfig.for_model("mm_classifier")
    assert isinstance(config, MultiModalConfig)
    assert config.backbone == "mobilenetv2_100" and config.problem_type == "multi_label_classification"
    assert config.thresholds == [0.5] * config.num_labels
    for field, value in [("modality", "audio"), ("dropout", 1.5), ("image_size", 0), ("thresholds", [0.3]),
                         ("lstm_num_layers", 0), ("pos_weight", [1.0]), ("modality_dropout", 0.6)]:
        with pytest.raises(ValueError, match=f"MultiModalConfig.{field}"):
            tiny_config(**{field: value})


def test_single_label_loss_is_weighted_cross_entropy_and_probabilities_a_calibrated_softmax():
    single = "single_label_classification"
    for field, value in [("problem_type", "regression"), ("class_weights", [1.0]),
                         ("calibration_temperatures", [1.0, 0.0, 1.0])]:
        with pytest.raises(ValueError, match=f"MultiModalConfig.{field}"):
            tiny_config(modality="text", **{field: value})
    with pytest.raises(ValueError, match="MultiModalConfig.class_weights"):  # a multi-label model weighs positives
        tiny_config(modality="text", class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="MultiModalConfig.pos_weight"):
        tiny_config(modality="text", problem_type=single, pos_weight=[1.0, 2.0, 3.0])
    model = MultiModalClassifier(tiny_config(modality="text", problem_type=single, class_weights=[1.0, 2.0, 0.5]))
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    classes = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, classes, weight=torch.tensor([1.0, 2.0, 0.5]))
    assert model.loss(logits, classes) == pytest.approx(expected.item())
    assert model.loss(logits, torch.eye(3)[classes]) == pytest.approx(expected.item())  # one-hot rows, as batched
    assert model.probabilities(logits).sum(-1).tolist() == pytest.approx([1.0, 1.0])
    model.config.calibration_temperatures = [2.0] * 3
    assert model.probabilities(logits) == pytest.approx((logits / 2).softmax(-1))
    assert model.probabilities(logits, calibrated=False) == pytest.approx(logits.softmax(-1))
    with pytest.raises(ValueError, match="MultiModalConfig.calibration_biases"):  # would change the chosen class
        tiny_config(modality="text", problem_type=single, calibration_biases=[0.0, 1.0, 0.0])
    multi = MultiModalClassifier(tiny_config(modality="text", calibration_temperatures=[1.0, 2.0, 4.0],
                                             calibration_biases=[0.0, -1.0, 0.5]))
    assert multi.probabilities(logits) == pytest.approx(
        torch.sigmoid(logits / torch.tensor([1.0, 2.0, 4.0]) + torch.tensor([0.0, -1.0, 0.5])))
    with torch.inference_mode():  # probabilities in inference mode, then with gradients (explanations)
        multi.probabilities(logits)
    leaf = logits.clone().requires_grad_()
    multi.probabilities(leaf).sum().backward()
    assert leaf.grad is not None
    multi.config.calibration_biases[1] = 1.0  # an edited list is read again
    assert multi.probabilities(logits) == pytest.approx(
        torch.sigmoid(logits / torch.tensor([1.0, 2.0, 4.0]) + torch.tensor([0.0, 1.0, 0.5])))


@pytest.mark.parametrize("modality", ["fusion", "image", "text"])
def test_output_shapes_for_each_modality(modality):
    model = MultiModalClassifier(tiny_config(modality=modality)).eval()
    batch = inputs()
    out = model(**batch, labels=torch.ones(3, 3))
    assert out.logits.shape == (3, 3) and out.loss.ndim == 0
    assert (out.image_embeds is None) == (modality == "text")
    assert (out.text_embeds is None) == (modality == "image")


def test_fusion_predicts_from_either_modality_alone_and_empty_captions():
    model = MultiModalClassifier(tiny_config()).eval()
    batch = inputs()
    assert model(pixel_values=batch["pixel_values"]).logits.shape == (3, 3)
    text_only = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert text_only.logits.shape == (3, 3)
    assert torch.all(text_only.text_embeds[2] == 0)  # the empty caption contributes nothing
    with pytest.raises(MMClassifierError, match="neither"):
        model()
    with pytest.raises(MMClassifierError, match="needs a image input"):
        MultiModalClassifier(tiny_config(modality="image"))(input_ids=batch["input_ids"])


def test_every_trainable_parameter_gets_a_gradient_and_frozen_blocks_none():
    model = MultiModalClassifier(tiny_config(modality_dropout=0.0)).train()
    out = model(**inputs(2), labels=torch.ones(2, 3))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []

    model = MultiModalClassifier(tiny_config())
    model.freeze_backbone(trainable_blocks=1)
    model.train()
    model(**inputs(2), labels=torch.ones(2, 3)).loss.backward()
    backbone = model.image_encoder.backbone
    trained = ("blocks." + str(len(backbone.blocks) - 1), "conv_head", "bn2")
    frozen = [p for n, p in backbone.named_parameters() if not n.startswith(trained)]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(p.grad is not None for p in backbone.blocks[-1].parameters())
    # When fine-tuning, every batch norm keeps its statistics in training mode; trainable ones still learn.
    assert not backbone.bn1.training and not backbone.bn2.training and backbone.bn2.weight.grad is not None
    running_var = backbone.bn2.running_var.clone()
    model(**inputs(2), labels=torch.ones(2, 3))
    assert torch.equal(backbone.bn2.running_var, running_var)


def test_frozen_encoders_stay_fixed_and_in_inference_mode_while_the_fusion_layers_train():
    model = MultiModalClassifier(tiny_config(modality_dropout=0.0))
    model.freeze_encoders(image=True, text=True)
    model.train()
    assert model.classifier.training and not model.image_encoder.training and not model.text_encoder.training
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs(3), labels=torch.ones(3, 3)).loss.backward()
    optimizer.step()
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"classifier"}
    # The frozen encoders' embeddings get dropout in training, none in evaluation.
    image_embeds = model.encode_image(inputs(3)["pixel_values"])
    assert not torch.equal(model.train()(**inputs(3)).image_embeds, image_embeds)
    assert torch.equal(model.eval()(**inputs(3)).image_embeds, image_embeds)
    with pytest.raises(MMClassifierError, match="no text encoder"):
        MultiModalClassifier(tiny_config(modality="image")).freeze_encoders(text=True)


def test_cached_frozen_features_give_the_same_logits_as_pixels():
    model = MultiModalClassifier(tiny_config())
    model.freeze_backbone(0)
    model.eval()
    batch = inputs()
    features = model.image_encoder.backbone_features(batch["pixel_values"])
    direct = model(**batch).logits
    cached = model(frozen_features=features, input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(direct, cached)
    # Precomputed image embeddings (train.py's path for a frozen image encoder) give the same logits too.
    embeds = model.encode_image(frozen_features=features)
    given = model(image_embeds=embeds, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(given.logits, direct)
    torch.testing.assert_close(model(image_embeds=embeds).logits, model(pixel_values=batch["pixel_values"]).logits)
    # So do precomputed caption embeddings (a frozen text encoder's), alone or with the photo's.
    text_embeds = model.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(model(image_embeds=embeds, text_embeds=text_embeds).logits, direct)
    torch.testing.assert_close(model(text_embeds=text_embeds).logits,
                               model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    text_only = MultiModalClassifier(tiny_config(modality="text")).eval()  # a text model ignores a photo
    torch.testing.assert_close(text_only(image_embeds=embeds, input_ids=batch["input_ids"]).logits,
                               text_only(input_ids=batch["input_ids"]).logits)
    image_only = MultiModalClassifier(tiny_config(modality="image")).eval()  # an image model ignores a caption
    torch.testing.assert_close(image_only(pixel_values=batch["pixel_values"], text_embeds=text_embeds).logits,
                               image_only(pixel_values=batch["pixel_values"]).logits)


def test_mirror_average_embeds_a_photo_and_its_mirror_alike_in_inference_only():
    model = MultiModalClassifier(tiny_config(modality="image", image_mirror_average=True, dropout=0.0)).eval()
    model.freeze_backbone(0)  # batch norm keeps its statistics in training too: only the views differ
    pixels = inputs()["pixel_values"]
    encoder = model.image_encoder
    with torch.no_grad():
        views = [encoder.project(encoder.backbone_features(x)) for x in (pixels, pixels.flip(-1))]
        averaged = model.encode_image(pixels)
        torch.testing.assert_close(averaged, (views[0] + views[1]) / 2)
        torch.testing.assert_close(model.encode_image(pixels.flip(-1)), averaged)
        channels_last = pixels.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model.encode_image(channels_last), averaged)
        # In training the photo is one view (the collator's augmentation chooses which); so is one cached view.
        torch.testing.assert_close(model.train().encode_image(pixels), views[0])
        model.eval()
        cached = [encoder.backbone_features(x) for x in (pixels, pixels.flip(-1))]
        torch.testing.assert_close(model.encode_image(frozen_features=cached[0]), views[0])
        # Both cached views: the same average as from pixels.
        torch.testing.assert_close(model.encode_image(frozen_features=cached[0], mirrored_frozen_features=cached[1]),
                                   averaged)
        plain = MultiModalClassifier(tiny_config(modality="image", dropout=0.0)).eval()
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(plain.encode_image(pixels), views[0])
    with pytest.raises(ValueError, match="image_mirror_average"):
        tiny_config(image_mirror_average="yes")


def test_features_from_chosen_blocks_through_pixels_and_cached_frozen_features(tmp_path):
    model = MultiModalClassifier(tiny_config(image_feature_blocks=[-2, -1])).eval()
    blocks = model.image_encoder.backbone.blocks
    n = len(blocks)
    assert model.image_encoder.feature_blocks == [n - 2, n - 1]
    pixels = inputs()["pixel_values"]
    # By hand: run the stages, pool the last two, concatenate.
    b = model.image_encoder.backbone
    x = b.bn1(b.conv_stem(pixels))
    pooled = []
    for index, block in enumerate(blocks):
        x = block(x)
        if index >= n - 2:
            pooled.append(x.mean(dim=(2, 3)))
    expected = torch.cat(pooled, dim=1)
    assert model.image_encoder.projection[1].in_features == expected.shape[1]
    torch.testing.assert_close(model.image_encoder.backbone_features(pixels), expected)
    direct = model(pixel_values=pixels).logits
    model.freeze_backbone(0)
    model.eval()
    torch.testing.assert_close(model(frozen_features=model.image_encoder.backbone_features(pixels)).logits, direct)
    model.save_pretrained(tmp_path)
    loaded = MultiModalClassifier.from_pretrained(tmp_path).eval()
    assert loaded.config.image_feature_blocks == [-2, -1]
    torch.testing.assert_close(loaded(pixel_values=pixels).logits, direct)


@pytest.mark.parametrize("blocks", [None, [-3, -1]])
def test_local_projection_projects_every_position_then_averages(blocks, tmp_path):
    model = MultiModalClassifier(tiny_config(image_feature_blocks=blocks, image_local_projection=True)).eval()
    encoder = model.image_encoder
    batch = {**inputs(), "pixel_values": torch.randn(3, 3, 64, 64)}  # 64 px: the head's map is 2x2, not 1x1
    pixels = batch["pixel_values"]
    # By hand: the feature map (the head's, or the chosen stages' pooled to the coarsest grid), the projection
    # at every position, then the average.
    b = encoder.backbone
    x = b.bn1(b.conv_stem(pixels))
    maps = []
    for index, block in enumerate(b.blocks):
        x = block(x)
        if blocks and index in encoder.feature_blocks:
            maps.append(x)
    if blocks is None:
        features = b.bn2(b.conv_head(x))
    else:
        grid = maps[-1].shape[-2:]
        assert maps[0].shape[-1] > grid[-1]  # two resolutions: the finer one is pooled
        features = torch.cat([torch.nn.functional.adaptive_avg_pool2d(m, grid) for m in maps], dim=1)
    expected = encoder.projection(features.permute(0, 2, 3, 1)).mean(dim=(1, 2))
    torch.testing.assert_close(encoder(pixels), expected)
    assert not torch.allclose(expected, encoder.projection(features.mean(dim=(2, 3))))  # not pool-then-project
    direct = model(**batch).logits
    model.freeze_backbone(0)
    model.eval()
    cached = encoder.backbone_features(pixels)  # a frozen backbone's cached maps give the same logits
    assert cached.dim() == 4
    text = {k: v for k, v in batch.items() if k != "pixel_values"}
    torch.testing.assert_close(model(frozen_features=cached, **text).logits, direct)
    model.save_pretrained(tmp_path)
    loaded = MultiModalClassifier.from_pretrained(tmp_path).eval()
    assert loaded.config.image_local_projection is True
    torch.testing.assert_close(loaded(**batch).logits, direct)
    with pytest.raises(ValueError, match="image_local_projection"):
        tiny_config(image_local_projection="yes")


def test_with_chosen_stages_every_parameter_that_asks_for_a_gradient_gets_one():
    # Parameters that ask for a gradient but never get one would stall multi-process (DDP) training.
    for trainable, local in ((None, False), (2, False), (2, True)):  # from scratch, the last two stages trained
        model = MultiModalClassifier(tiny_config(modality="image", image_feature_blocks=[-3, -2],
                                                 image_local_projection=local))
        if trainable is not None:
            model.freeze_backbone(trainable)
        model.train()
        model(pixel_values=inputs(2)["pixel_values"], labels=torch.ones(2, 3)).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], (trainable, local, missing[:3])
        backbone = model.image_encoder.backbone
        assert not any(p.requires_grad for p in (*backbone.blocks[-1].parameters(), *backbone.conv_head.parameters()))


def test_chosen_blocks_and_trainable_blocks_are_checked():
    # test_efficientnet's stages are its five blocks (forward_intermediates numbers its stem 0, before them).
    with pytest.raises(MMClassifierError, match=r"stages are 0 to 4 \(or -5 to -1\): blocks.0, .*, blocks.4\."):
        MultiModalClassifier(tiny_config(image_feature_blocks=[99]))
    with pytest.raises(ValueError, match="image_feature_blocks"):
        tiny_config(image_feature_blocks=[1, 1])
    encoder = MultiModalClassifier(tiny_config()).image_encoder
    assert encoder.trainable_blocks == encoder.num_stages == 6  # trains whole until frozen
    with pytest.raises(MMClassifierError, match="between 0 and 5, got -1"):
        encoder.freeze(-1)
    with pytest.raises(MMClassifierError, match="between 0 and 5, got 6"):
        encoder.freeze(6)
    resnet = MultiModalClassifier(tiny_config(backbone="test_resnet", modality="image"))
    with pytest.raises(MMClassifierError, match="between 0 and 4, got 5"):
        resnet.freeze_backbone(5)
    with pytest.raises(MMClassifierError, match="stages are 0 to 4 .*: act1, layer1, layer2, layer3, layer4"):
        MultiModalClassifier(tiny_config(backbone="test_resnet", image_feature_blocks=[-6]))
    with pytest.raises(MMClassifierError, match="final features are tokens; choose its blocks"):
        MultiModalClassifier(tiny_config(backbone="test_vit", image_local_projection=True))


# timm's tiny test models of each family (built offline): the parameters that trainable_blocks=1 leaves
# trainable, and the modules of the last two feature stages.
FAMILIES = {
    "test_efficientnet": (("blocks.4.", "conv_head.", "bn2."), ("blocks.3", "blocks.4")),
    "test_resnet": (("layer4.",), ("layer3", "layer4")),
    "test_convnext": (("stages.3.", "head.norm."), ("stages.2", "stages.3")),
    "test_vit": (("blocks.5.", "norm."), ("blocks.4", "blocks.5")),
}


@pytest.mark.parametrize("backbone", FAMILIES)
def test_each_family_trains_only_its_last_stage_and_what_follows_it(backbone):
    trained, _ = FAMILIES[backbone]
    model = MultiModalClassifier(tiny_config(backbone=backbone, modality="image"))
    model.freeze_backbone(1)
    model.train()
    model(pixel_values=inputs(2)["pixel_values"], labels=torch.ones(2, 3)).loss.backward()
    parameters = dict(model.image_encoder.backbone.named_parameters())
    trainable = {name for name, p in parameters.items() if p.requires_grad}
    assert trainable == {name for name in parameters if name.startswith(trained)}
    assert all(parameters[name].grad is not None for name in trainable)
    assert all(p.grad is None for name, p in parameters.items() if name not in trainable)


@pytest.mark.parametrize("backbone", FAMILIES)
@pytest.mark.parametrize("blocks", [None, [-2, -1]])
def test_each_family_s_cached_frozen_features_give_the_pixels_embedding(backbone, blocks):
    model = MultiModalClassifier(tiny_config(backbone=backbone, modality="image", image_feature_blocks=blocks,
                                             image_local_projection=blocks is not None, image_mirror_average=True))
    model.freeze_backbone(0)
    model.eval()
    encoder, pixels = model.image_encoder, inputs()["pixel_values"]
    with torch.no_grad():
        plain, mirrored = (encoder.backbone_features(x) for x in (pixels, pixels.flip(-1)))
        torch.testing.assert_close(model.encode_image(frozen_features=plain, mirrored_frozen_features=mirrored),
                                   model.encode_image(pixels))


@pytest.mark.parametrize("backbone", FAMILIES)
def test_each_family_s_chosen_stages_are_its_last_stages_pooled(backbone):
    _, last_two = FAMILIES[backbone]
    model = MultiModalClassifier(tiny_config(backbone=backbone, modality="image", image_feature_blocks=[-2, -1]))
    model.eval()
    backbone_model, pixels = model.image_encoder.backbone, inputs()["pixel_values"]
    # By hand: the two stage modules' outputs in a plain forward, pooled; test_vit's patch tokens follow its one
    # class token.
    outputs = []
    for name in last_two:
        backbone_model.get_submodule(name).register_forward_hook(lambda m, args, output: outputs.append(output))
    with torch.no_grad():
        backbone_model(pixels)
        expected = torch.cat([o.mean(dim=(2, 3)) if o.dim() == 4 else o[:, 1:].mean(dim=1) for o in outputs], dim=1)
        torch.testing.assert_close(model.image_encoder.backbone_features(pixels), expected)
    # With its last stage trainable every parameter that asks for a gradient gets one: none after the chosen stages.
    model.freeze_backbone(1)
    model.train()
    model(pixel_values=inputs(2)["pixel_values"], labels=torch.ones(2, 3)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and any(p.requires_grad for p in backbone_model.parameters())


def test_save_and_load_give_identical_logits(tmp_path):
    model = MultiModalClassifier(tiny_config(thresholds=[0.2, 0.4, 0.6])).eval()
    batch = inputs()
    model.save_pretrained(tmp_path)
    loaded = MultiModalClassifier.from_pretrained(tmp_path).eval()
    reloaded_state = loaded.state_dict()
    assert all(torch.equal(tensor, reloaded_state[name]) for name, tensor in model.state_dict().items())
    # Bitwise-equal weights; the logits may differ in the last float bit (memory layout picks the BLAS path).
    torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits, rtol=0, atol=1e-6)
    assert loaded.config.thresholds == [0.2, 0.4, 0.6] and loaded.config.concepts == ["dog", "beach", "man"]
    assert type(AutoModel.from_pretrained(tmp_path)) is MultiModalClassifier


def test_auto_model_in_a_fresh_process(tmp_path):
    model = MultiModalClassifier(tiny_config()).eval()
    batch = inputs()
    model.save_pretrained(tmp_path)
    torch.save(batch, tmp_path / "batch.pt")
    expected = model(**batch).logits
    script = (
        "import sys, torch, mm_classifier\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path)!r}).eval()\n"
        f"b = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        f"torch.save(m(**b).logits, {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path))  # the installed package
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-6)


def test_pretrained_backbone_from_a_local_file_and_offline_hub(tmp_path):
    source = MultiModalClassifier(tiny_config())
    weights = {k: v.contiguous() for k, v in source.image_encoder.backbone.state_dict().items()}
    save_file(weights, tmp_path / "backbone.safetensors")
    model = MultiModalClassifier(tiny_config())
    model.load_pretrained_backbone(tmp_path / "backbone.safetensors")
    for name, tensor in model.image_encoder.backbone.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])
    with pytest.raises(MMClassifierError, match="does not exist"):
        model.load_pretrained_backbone(tmp_path / "nope.safetensors")
    save_file({"foo": torch.zeros(1)}, tmp_path / "wrong.safetensors")
    with pytest.raises(MMClassifierError, match="do not fit"):
        model.load_pretrained_backbone(tmp_path / "wrong.safetensors")
    with pytest.raises(MMClassifierError, match="HF_HUB_OFFLINE.*--backbone-weights.*--no-pretrained"):
        model.load_pretrained_backbone(None)
