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


@pytest.mark.parametrize("dataset, hub_datasets, prose", [
    ("sample", None, "mm_classifier's built-in synthetic sample (not on the Hub)"),
    ("sample-grounds", None, "mm_classifier's built-in synthetic sample (not on the Hub)"),
    ("someone/flickr8k-parquet", ["someone/flickr8k-parquet"], "a data set on the Hub"),
    ("data/flickr8k", None, "a local folder or file (not on the Hub)"),
    ("shop/products.csv", None, "a local folder or file (not on the Hub)"),
])
def test_card_names_the_data_set_trained_on(tmp_path, monkeypatch, dataset, hub_datasets, prose):
    # A local folder or file is no hub data set, whatever its name (today's code called every one flickr8k).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "flickr8k").mkdir(parents=True)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "products.csv").write_text("file_name,caption,labels\n")
    card = model_card(tmp_path, card_config(), dataset=dataset)
    metadata = ModelCard(card).data.to_dict()
    assert metadata.get("datasets") == hub_datasets
    # A test figure's data set is a hub id too: a run on data that is not on the Hub keeps its figures in the text.
    assert ("model-index" in metadata) == (hub_datasets is not None)
    assert f"Trained on `{dataset}`, {prose};" in card


def test_card_of_a_run_without_figures_has_no_model_index(tmp_path):
    metadata = ModelCard(model_card(tmp_path, card_config(), results={})).data.to_dict()
    assert "model-index" not in metadata


def test_card_concepts_data_results_and_use(tmp_path):
    card = model_card(tmp_path, card_config(), dataset="someone/flickr8k")
    assert 'pipeline(model="path/to/this/folder", trust_remote_code=True)' in card
    assert "multi-label, any number\nof concepts per input, each predicted at or above its own threshold" in card
    assert "## Concepts\n\n`dog` (threshold 0.25), `beach` (threshold 0.60)" in card
    assert "at least 3 of its captions name it" in card
    assert "Trained on `someone/flickr8k`, a data set on the Hub; 1200 training rows; tested on\n400 (photo" in card
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
    assert "; ? training rows; tested on\n? (photo" in card
    assert "|---|---:|\n\n" in card  # an empty results table
    assert "## Calibration" not in card  # no calibration error recorded


SINGLE_LABEL_RESULTS = {
    "test_accuracy": 0.8312, "test_micro_f1": 0.8312, "test_top_k_accuracy": 0.97, "test_macro_f1": 0.8,
    "test_mAP": 0.9, "test_ece": 0.0312, "test_ece_uncalibrated": 0.1204, "train_rows": 800, "test_pairs": 131,
}


def test_card_of_a_single_label_model_with_given_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "products").mkdir()
    config = card_config(problem_type="single_label_classification", concept_words=None)
    card = model_card(tmp_path, config, results=SINGLE_LABEL_RESULTS, dataset="products")
    assert "Predicts which one of 2 classes a photo and/or its caption belongs to" in card
    assert "single-label,\nexactly one class per input, the most probable one" in card and "multi-label" not in card
    # Classes without thresholds: a single-label model has none.
    assert "## Classes\n\n`dog`, `beach`\n" in card and "threshold" not in card
    assert "The labels were given with the data and used as given" in card and "leave-one-out" not in card
    # Its own metrics, with accuracy first; the calibration error before and after.
    assert "| metric | value |\n|---|---:|\n| accuracy | 0.831 |\n| top-3 acc. | 0.970 |\n| macro-F1 | 0.800 |" in card
    assert "micro-F1" not in card
    assert "## Calibration" in card and "0.120 before\ncalibration, 0.031 after" in card
    assert "one temperature for every class" in card
    metadata = ModelCard(card).data.to_dict()
    assert "single-label-classification" in metadata["tags"] and "multi-label-classification" not in metadata["tags"]
    assert "datasets" not in metadata and "Trained on `products`, a local folder or file (not on the Hub)" in card


def test_card_of_a_multi_label_model_shows_its_calibration(tmp_path):
    card = model_card(tmp_path, card_config(), results={**RESULTS, "test_ece": 0.02, "test_ece_uncalibrated": 0.05})
    assert "a temperature and a bias per concept, before its sigmoid" in card
    assert "0.050 before\ncalibration, 0.020 after" in card


@pytest.mark.parametrize("overrides, phrase", [
    ({}, "word-level BiLSTM caption encoder (50-word vocabulary)"),
    ({"text_encoder_type": "bag"}, "bag of words and word bigrams caption encoder (50-word vocabulary)"),
    ({"text_encoder_type": "transformers", "text_model_config": {"model_type": "bert"},
      "text_model_name": "/models/all-MiniLM-L6-v2/", "text_trainable_layers": 2},
     "pretrained text encoder `all-MiniLM-L6-v2` (last 2 layers fine-tuned)"),
])
def test_card_names_the_text_encoder(tmp_path, overrides, phrase):
    assert phrase in model_card(tmp_path, card_config(**overrides))
