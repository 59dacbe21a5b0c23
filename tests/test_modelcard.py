import pytest
from huggingface_hub import ModelCard

from mm_classifier import PIPELINE_TASK, MultiModalConfig
from mm_classifier.fusion import describe
from mm_classifier.modelcard import write_model_card

RESULTS = {
    "test_micro_f1": 0.61234, "test_mAP": None, "test_not_a_summary_metric": 0.9, "train_rows": 1200,
    "test_pairs": 400, "best_epoch": 3, "epochs_run": 5, "train_seconds": 42.0,
}


def card_config(modality="fusion", fusion_type="concat", **overrides):
    config = MultiModalConfig(
        modality=modality, backbone="test_efficientnet", image_size=32, vocab_size=50,
        id2label={0: "dog", 1: "beach"}, thresholds=[0.25, 0.6], min_votes=3,
        **{"concept_words": {"dog": ["dog", "puppy"], "beach": ["beach"]}, **overrides},
    )
    config.fusion_type = fusion_type  # set after construction: the field may not exist in every checkout yet
    return config


def model_card(tmp_path, config, results=RESULTS, dataset="data/flickr8k"):
    write_model_card(tmp_path, config, results, dataset=dataset)
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


def test_card_metadata_the_hub_reads(tmp_path):
    card = model_card(tmp_path, card_config(), dataset="someone/flickr8k")
    metadata = ModelCard(card).data.to_dict()  # parsed the Hub's way
    assert metadata["library_name"] == "transformers"
    # No Hub task runs a photo and a caption: the model's own pipeline (pipeline.py) does, through custom code.
    assert metadata["pipeline_tag"] == "other" and PIPELINE_TASK in metadata["tags"]
    assert metadata["datasets"] == ["someone/flickr8k"]
    (result,) = metadata["model-index"][0]["results"]
    assert metadata["model-index"][0]["name"] == "mm_classifier-fusion"
    assert result["dataset"] == {"name": "someone/flickr8k", "type": "someone/flickr8k", "split": "test"}
    # The test figures of all_results.json: defined summary metrics only.
    assert result["metrics"] == [{"type": "micro_f1", "name": "micro-F1", "value": 0.6123}]


@pytest.mark.parametrize("dataset, hub_datasets", [
    ("sample", None), ("someone/flickr8k-parquet", ["someone/flickr8k-parquet"]), ("data/flickr8k", ["flickr8k"]),
])
def test_card_names_the_hub_data_set(tmp_path, dataset, hub_datasets):
    if dataset == "data/flickr8k":
        (tmp_path / "data" / "flickr8k").mkdir(parents=True)
        dataset = str(tmp_path / "data" / "flickr8k")
    write_model_card(tmp_path, card_config(), RESULTS, dataset=dataset)
    assert ModelCard((tmp_path / "README.md").read_text()).data.to_dict().get("datasets") == hub_datasets


def test_card_of_a_run_without_figures_has_no_model_index(tmp_path):
    metadata = ModelCard(model_card(tmp_path, card_config(), results={})).data.to_dict()
    assert "model-index" not in metadata


def test_card_concepts_data_results_and_use(tmp_path):
    card = model_card(tmp_path, card_config())
    assert 'pipeline(model="path/to/this/folder", trust_remote_code=True)' in card
    assert "`dog` (threshold 0.25), `beach` (threshold 0.60)" in card
    assert "at least 3 of its captions name it" in card
    assert "Trained on `data/flickr8k`; 1200 training rows; tested on 400\n" in card
    # Only summary metrics appear, in the summary's order and labels; an undefined one is n/a.
    assert "| metric | value |\n|---|---:|\n| micro-F1 | 0.612 |\n| mAP | n/a |\n\n" in card
    assert "not_a_summary_metric" not in card
    assert "Best epoch 3 of 5; 42.0 s of training." in card


def test_card_says_how_the_labels_were_made(tmp_path):
    mined = model_card(tmp_path, card_config())
    assert "labelled leave-one-out" in mined and "given with the data" not in mined
    given = model_card(tmp_path, card_config(concept_words=None), dataset="shop/products.csv")
    assert "The labels were given with the data" in given and "leave-one-out" not in given
    assert "come from\nthe training data (`shop/products.csv`)" in given


def test_card_of_an_incomplete_run_says_what_is_unknown(tmp_path):
    card = model_card(tmp_path, card_config(), results={})
    assert "; ? training rows; tested on ?\n" in card
    assert "|---|---:|\n\n" in card  # an empty results table


@pytest.mark.parametrize("overrides, phrase", [
    ({}, "word-level BiLSTM caption encoder (50-word vocabulary)"),
    ({"text_encoder_type": "bag"}, "bag of words and word bigrams caption encoder (50-word vocabulary)"),
    ({"text_encoder_type": "transformers", "text_model_config": {"model_type": "bert"},
      "text_model_name": "/models/all-MiniLM-L6-v2/", "text_trainable_layers": 2},
     "pretrained text encoder `all-MiniLM-L6-v2` (last 2 layers fine-tuned)"),
])
def test_card_names_the_text_encoder(tmp_path, overrides, phrase):
    assert phrase in model_card(tmp_path, card_config(**overrides))
