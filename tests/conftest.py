"""Shared fixtures: offline environment, a private cache, tiny data sets and one tiny trained model."""

import os

import pytest

# Before any Hugging Face import: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TRAIN_ARGS = [
    "--no-pretrained", "--backbone", "test_efficientnet", "--image-size", "32", "--batch-size", "16",
    "--epochs", "2", "--preprocessing-num-proc", "1",
]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Sample and feature caches live in a temporary folder, never in the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("mm_cache")
    os.environ["MM_CLASSIFIER_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A Kaggle-layout folder of 60 synthetic scenes (the sample's generator, smaller)."""
    from mm_classifier.sample import generate_sample

    folder = tmp_path_factory.mktemp("tiny_kaggle")
    generate_sample(folder, seed=3, num_photos=60)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_folder):
    """A fusion model trained for two epochs on the tiny folder through train.main (seconds)."""
    import train  # the repository root is on sys.path through pytest's `pythonpath` option (pyproject.toml)

    out = tmp_path_factory.mktemp("tiny_model")
    assert train.main(["--dataset", str(tiny_folder), "--output-dir", str(out), "--modality", "fusion",
                       *TINY_TRAIN_ARGS]) == 0
    return out


@pytest.fixture(scope="session")
def predictor(tiny_model):
    """The tiny model loaded through the prediction API."""
    from mm_classifier import Predictor

    return Predictor.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def photo(tiny_folder):
    """One photo of the tiny folder."""
    return str(tiny_folder / "images" / "scene_00000.png")


def make_tiny_bert(folder, words=()):
    """A tiny random BERT encoder with its tokenizer in ``folder``: the stand-in for a hub text encoder (tests never
    download one). The vocabulary: BERT's special tokens, ``words`` and the letters (so any word tokenizes)."""
    import string

    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(w.lower() for w in words),
             *string.ascii_lowercase, *(f"##{c}" for c in string.ascii_lowercase), *string.digits, *".,!?'-"]
    vocab = list(dict.fromkeys(vocab))
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocab)})
    config = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_folder):
    """A tiny random BERT folder whose vocabulary knows the tiny folder's caption words."""
    import re

    words = re.findall(r"[a-z]+", (tiny_folder / "captions.txt").read_text().lower())
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), words)
