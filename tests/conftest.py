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


CAPTIONS = ["a dog runs on the beach", "a man in a red shirt", "two dogs play in the snow"]


def save_tiny_model(folder, modality: str = "fusion", text_encoder: str = "lstm", **overrides):
    """A tiny random model and its processor, saved the way train.py saves them (no training: seconds);
    ``text_encoder`` "transformers" is a tiny random BERT; ``overrides`` are config fields."""
    import torch

    from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor, build_tokenizer
    from mm_classifier.text_models import caption_tokenizer, pretrained_text_config

    text = {}
    if text_encoder == "transformers":
        bert = make_tiny_bert(folder.parent / "bert", " ".join(CAPTIONS).split())
        tokenizer = caption_tokenizer(str(bert), CAPTIONS)
        text = {"text_model_config": pretrained_text_config(str(bert))[0]}
    else:
        tokenizer = build_tokenizer(CAPTIONS, min_frequency=1)
    settings = dict(
        modality=modality, backbone="test_efficientnet", image_size=32, vocab_size=len(tokenizer),
        id2label={0: "dog", 1: "beach", 2: "man"}, thresholds=[0.3, 0.5, 0.6], image_embed_dim=16, text_embed_dim=16,
        word_embed_dim=8, lstm_hidden_size=8, fusion_hidden_sizes=[16], text_encoder_type=text_encoder,
        pad_token_id=tokenizer.pad_token_id, bag_buckets=64, **text,
    )
    config = MultiModalConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    model = MultiModalClassifier(config).eval()
    processor = MultiModalProcessor.from_config(config, tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_folder):
    """A tiny random BERT folder whose vocabulary knows the tiny folder's caption words."""
    import re

    words = re.findall(r"[a-z]+", (tiny_folder / "captions.txt").read_text().lower())
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), words)
