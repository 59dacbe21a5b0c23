import pytest

from mm_classifier import MultiModalConfig
from mm_classifier.fusion import describe
from mm_classifier.modelcard import write_model_card

RESULTS = {
    "test_micro_f1": 0.61234, "test_mAP": None, "test_not_a_summary_metric": 0.9, "train_rows": 1200,
    "test_pairs": 400, "best_epoch": 3, "epochs_run": 5, "train_seconds": 42.0,
}


def card_config(modality="fusion", fusion_type="concat", **overrides):
    config = MultiModalConfig(
        modality=modality, backbone="test_efficientnet", image_size=32, vocab_size=50,
        id2label={0: "dog", 1: "beach"}, thresholds=[0.25, 0.6], min_votes=3, **overrides,
    )
    config.fusion_type = fusion_type  # set after construction: the field may not exist in every checkout yet
    return config


def model_card(tmp_path, config, results=RESULTS):
    write_model_card(tmp_path, config, results, dataset="data/flickr8k")
    return (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("fusion_type, phrase", [
    ("concat", "concatenation of the two embeddings, then fully connected layers"),
    ("gated", "a gated multimodal unit"),
])
def test_card_describes_the_configured_fusion(tmp_path, fusion_type, phrase):
    card = model_card(tmp_path, card_config(fusion_type=fusion_type))
    assert f"{describe(card_config(fusion_type=fusion_type))} (`modality=fusion`)." in card
    assert phrase in card
    assert "Predicts which of 2 concepts appear in a photo and/or its caption" in card


def test_card_of_a_text_only_model_says_it_reads_text_only(tmp_path):
    card = model_card(tmp_path, card_config("text"))
    assert "text only: fully connected layers on the text embedding (`modality=text`)." in card
    assert "concatenation" not in card
    assert "appear in a caption, each with a probability" in card
    assert "# mm_classifier: text model" in card


def test_card_mentions_mirror_averaging_only_for_models_that_see_photos(tmp_path):
    mirror = "a photo's embedding is the mean of its own and its mirror image's"
    assert mirror in model_card(tmp_path, card_config("image", image_mirror_average=True))
    assert mirror not in model_card(tmp_path, card_config("text", image_mirror_average=True))
    assert mirror not in model_card(tmp_path, card_config("image"))


def test_card_metadata_concepts_data_and_results(tmp_path):
    card = model_card(tmp_path, card_config())
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-classification\n")
    assert "`dog` (threshold 0.25), `beach` (threshold 0.60)" in card
    assert "at least 3 of its captions name it" in card
    assert "Trained on `data/flickr8k`; 1200 training rows; tested on 400\n" in card
    # Only summary metrics appear, in the summary's order and labels; an undefined one is n/a.
    assert "| metric | value |\n|---|---:|\n| micro-F1 | 0.612 |\n| mAP | n/a |\n\n" in card
    assert "not_a_summary_metric" not in card
    assert "Best epoch 3 of 5; 42.0 s of training." in card


def test_card_of_an_incomplete_run_says_what_is_unknown(tmp_path):
    card = model_card(tmp_path, card_config(), results={})
    assert "; ? training rows; tested on ?\n" in card
    assert "|---|---:|\n\n" in card  # an empty results table
