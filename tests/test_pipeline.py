"""The multimodal-classification pipeline, in a process that has imported mm_classifier."""

import pytest
import torch
from PIL import Image
from transformers import pipeline

from mm_classifier import (
    PIPELINE_TASK,
    MultiModalClassificationPipeline,
    MultiModalClassifier,
    MultiModalConfig,
    MultiModalProcessor,
    build_tokenizer,
)

CONCEPTS = {0: "dog", 1: "beach", 2: "man"}


def tiny_pipeline(modality="fusion", thresholds=(0.3, 0.5, 0.6), **overrides):
    tokenizer = build_tokenizer(["a dog runs on the beach", "a man in a red shirt"], min_frequency=1)
    config = MultiModalConfig(
        modality=modality, backbone="test_efficientnet", image_size=32, vocab_size=len(tokenizer), id2label=CONCEPTS,
        thresholds=list(thresholds), image_embed_dim=16, text_embed_dim=16, word_embed_dim=8, lstm_hidden_size=8,
        fusion_hidden_sizes=[16], **overrides,
    )
    torch.manual_seed(0)
    model = MultiModalClassifier(config).eval()
    processor = MultiModalProcessor.from_config(config, tokenizer)
    return pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def photos():
    return [Image.effect_mandelbrot((48, 40), (-2, -1.5, 1, 1.5), 30).convert("RGB"),
            Image.new("RGB", (40, 30), (10, 200, 30))]


def expected_scores(pipe, **inputs) -> dict[str, float]:
    with torch.no_grad():
        logits = pipe.model(**pipe.processor(**inputs)).logits[0]
    return dict(zip(CONCEPTS.values(), torch.sigmoid(logits).tolist(), strict=True))


def test_every_concept_sorted_by_score_with_the_tuned_thresholds(pipe, photos):
    assert isinstance(pipe, MultiModalClassificationPipeline)
    results = pipe(image=photos[0], text="a dog on the beach")
    expected = expected_scores(pipe, images=photos[0], text="a dog on the beach")
    assert [r["label"] for r in results] == sorted(expected, key=expected.get, reverse=True)
    thresholds = dict(zip(CONCEPTS.values(), pipe.model.config.thresholds, strict=True))
    for result in results:
        assert result["score"] == pytest.approx(expected[result["label"]], abs=1e-6)
        assert result["predicted"] == (result["score"] >= thresholds[result["label"]])


def test_input_forms_give_the_same_results(pipe, photos):
    image, caption = photos[0], "a man on the beach"
    both = pipe(image=image, text=caption)
    assert pipe({"image": image, "text": caption}) == both
    assert pipe(image, text=caption) == both
    assert pipe([{"image": image, "text": caption}]) == [both]
    assert pipe(image) == pipe({"image": image}) == pipe(image=image)
    assert pipe({"text": caption}) == pipe(text=caption)
    # Lists: one dict per input; a single caption (or photo) is used for every photo (or caption).
    assert pipe(image=photos, text=caption) == [pipe(image=p, text=caption) for p in photos]
    with pytest.raises(ValueError, match="2 photos but 3 captions"):
        pipe(image=photos, text=["a", "b", "c"])
    with pytest.raises(ValueError, match="either as dicts or as image= and text="):
        pipe({"image": image}, text=caption)
    with pytest.raises(ValueError, match="needs a photo or a caption"):
        pipe({"text": None})


def test_batches_and_missing_inputs_match_one_by_one(pipe, photos):
    inputs = [{"image": photos[0], "text": "a dog"}, {"text": "a man in a red shirt"}, {"image": photos[1]},
              {"image": photos[1], "text": ""}]
    one_by_one = [pipe(item) for item in inputs]
    for batch_size in (2, 4):
        batched = pipe(inputs, batch_size=batch_size)
        for got, expected in zip(batched, one_by_one, strict=True):
            assert [r["label"] for r in got] == [r["label"] for r in expected]
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    # A missing input is what the model gets when it is left out: photo only, caption only.
    for item, results in zip(inputs[1:3], one_by_one[1:3], strict=True):
        expected = expected_scores(pipe, images=item.get("image"), text=item.get("text"))
        assert {r["label"]: r["score"] for r in results} == pytest.approx(expected, abs=1e-6)


def test_top_k_and_threshold(pipe, photos):
    full = pipe(image=photos[0], text="a dog")
    assert pipe(image=photos[0], text="a dog", top_k=2) == full[:2]
    assert all(r["predicted"] for r in pipe(image=photos[0], text="a dog", threshold=0.0))
    assert not any(r["predicted"] for r in pipe(image=photos[0], text="a dog", threshold=1.0))
    per_concept = pipe(image=photos[0], text="a dog", threshold=[0.0, 1.0, 0.0])
    assert {r["label"] for r in per_concept if r["predicted"]} == {"dog", "man"}
    with pytest.raises(ValueError, match="one per concept"):
        pipe(image=photos[0], threshold=[0.5, 0.5])


def test_a_single_label_model_marks_only_its_most_probable_class(photos):
    pipe = tiny_pipeline(problem_type="single_label_classification", calibration_temperatures=[2.0] * 3)
    for image in photos:
        results = pipe(image=image, text="a dog on the beach")
        with torch.no_grad():
            logits = pipe.model(**pipe.processor(images=image, text="a dog on the beach")).logits[0]
        expected = dict(zip(CONCEPTS.values(), (logits / 2.0).softmax(-1).tolist(), strict=True))
        assert {r["label"]: r["score"] for r in results} == pytest.approx(expected, abs=1e-6)
        assert [r["predicted"] for r in results] == [True, False, False]  # sorted by score: the first is chosen
    with pytest.raises(ValueError, match="thresholds do not apply"):
        pipe(image=photos[0], threshold=0.5)


def test_a_single_modality_model_ignores_the_other_input(photos):
    text_pipe = tiny_pipeline("text")
    assert text_pipe(image=photos[0], text="a dog") == text_pipe(text="a dog")
    with pytest.raises(ValueError, match="This text model needs a caption"):
        text_pipe(image=photos[0])
    image_pipe = tiny_pipeline("image")
    assert image_pipe(image=photos[0], text="a dog") == image_pipe(image=photos[0])
    with pytest.raises(ValueError, match="This image model needs a photo"):
        image_pipe(text="a dog")


def test_a_saved_folder_with_the_package_pipeline_class(pipe, photos, tmp_path):
    pipe.model.save_pretrained(tmp_path)
    pipe.processor.save_pretrained(tmp_path)
    # In a process with mm_classifier, pipeline_class= runs the package's pipeline without trust_remote_code.
    loaded = pipeline(model=str(tmp_path), pipeline_class=MultiModalClassificationPipeline, device="cpu")
    assert type(loaded.model) is MultiModalClassifier and type(loaded.processor) is MultiModalProcessor
    expected = pipe(image=photos[1], text="a man")
    got = loaded(image=photos[1], text="a man")
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)
