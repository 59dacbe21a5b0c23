"""The model card: the ``README.md`` of a saved model folder (hub metadata, concepts, data, metrics, limits)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import transformers
from huggingface_hub import EvalResult, ModelCardData

from .data import looks_like_hub_id
from .fusion import describe
from .pipeline import PIPELINE_TASK
from .reporting import SUMMARY_KEYS, format_metric

__all__ = ["card_metadata", "write_model_card"]

# The Hub has no task for "photo and caption -> concepts"; the model runs in its own pipeline (pipeline.py).
PIPELINE_TAG = "other"


def card_metadata(config, results: dict, dataset: str) -> ModelCardData:
    """The YAML front matter the Hub reads: library, task, tags, data set and the test figures (model-index).

    Args: as :func:`write_model_card`.
    """
    dataset_id = _hub_dataset(dataset)
    figures = [
        EvalResult(task_type=PIPELINE_TAG, task_name="Multi-label concept classification",
                   dataset_type=dataset_id or dataset, dataset_name=dataset_id or dataset, dataset_split="test",
                   metric_type=key, metric_name=label, metric_value=round(results["test_" + key], 4))
        for key, label in SUMMARY_KEYS if results.get("test_" + key) is not None
    ]
    return ModelCardData(
        library_name="transformers", pipeline_tag=PIPELINE_TAG,
        tags=["mm_classifier", PIPELINE_TASK, "multi-label-classification", "multimodal"],
        datasets=[dataset_id] if dataset_id else None, metrics=["f1", "average_precision", "roc_auc"],
        model_name=f"mm_classifier-{config.modality}" if figures else None, eval_results=figures or None,
    )


def _hub_dataset(dataset: str) -> str | None:
    """The data set's hub id: itself for a hub id, ``flickr8k`` for a local copy, None for the built-in sample."""
    if dataset == "sample":
        return None
    if looks_like_hub_id(dataset) and not Path(dataset).expanduser().exists():
        return dataset
    return "flickr8k"


def labelling(config) -> str:
    """How the training pairs were labelled: mined from captions leave-one-out, or given with the data."""
    if config.concept_words is None:
        return (
            "The labels were given with the data (a labels column): every caption of a photo is paired with the "
            "photo's labels,\nso no caption decides a label."
        )
    return (
        f"A photo has a concept when at least {config.min_votes} of its captions name it (words per concept are in\n"
        "`config.json`, `concept_words`). Training and test pairs are labelled leave-one-out: a caption never "
        "decides\nits own label, so a caption-reading model cannot just spot keywords."
    )


def text_encoder_description(config) -> str:
    """The caption encoder in a few words, e.g. "pretrained text encoder `all-MiniLM-L6-v2` (frozen)"."""
    if config.text_encoder_type == "transformers":
        name = str(config.text_model_name or config.text_model_config.get("model_type")).rstrip("/").split("/")[-1]
        layers = config.text_trainable_layers
        return f"pretrained text encoder `{name}` ({f'last {layers} layers fine-tuned' if layers else 'frozen'})"
    kind = {"lstm": "word-level BiLSTM", "bag": "bag of words and word bigrams"}[config.text_encoder_type]
    return f"{kind} caption encoder ({config.vocab_size}-word vocabulary)"


def write_model_card(directory: Path, config, results: dict, dataset: str) -> None:
    """Write the model card ``README.md`` into a saved model's folder.

    Args:
        directory: the model folder.
        config: the model's :class:`~mm_classifier.MultiModalConfig` (modality, fusion, concepts, thresholds).
        results: training's results: ``test_<key>`` for each key of :data:`~mm_classifier.reporting.SUMMARY_KEYS`
            (missing ones are left out of the table), ``train_rows``, ``test_pairs``, ``best_epoch``,
            ``epochs_run`` and ``train_seconds``.
        dataset: the training data set, as given to ``train.py``.
    """
    modality = {"fusion": "a photo and/or its caption", "image": "a photo", "text": "a caption"}[config.modality]
    mirror = " (a photo's embedding is the mean of its own and its mirror image's)" if (
        config.uses_image and config.image_mirror_average) else ""
    metric_rows = "\n".join(
        f"| {label} | {format_metric(results.get('test_' + key))} |"
        for key, label in SUMMARY_KEYS if "test_" + key in results
    )
    card = f"""---
{card_metadata(config, results, dataset).to_yaml()}
---

# mm_classifier: {config.modality} model

Predicts which of {config.num_labels} concepts appear in {modality}, each with a probability.
Backbone `{config.backbone}` at {config.image_size} px{mirror}; {text_encoder_description(config)};
{describe(config)} (`modality={config.modality}`).

## Concepts

{", ".join(f"`{c}` (threshold {t:.2f})" for c, t in zip(config.concepts, config.thresholds, strict=True))}

{labelling(config)}

## Data

Trained on `{dataset}`; {results.get('train_rows', '?')} training rows; tested on {results.get('test_pairs', '?')}
(photo, caption) pairs of photos that training never saw (the split is by photo).

## Results (test split)

| metric | value |
|---|---:|
{metric_rows}

Best epoch {results.get('best_epoch')} of {results.get('epochs_run')}; {results.get('train_seconds')} s of training.

## Use

With transformers, timm, torch, tokenizers and pillow installed (not mm_classifier; this folder was saved with
transformers {transformers.__version__}, timm {timm.__version__} and torch {torch.__version__}), its own code files
(`modeling.py`, `processing.py`, `pipeline.py` and what they import) run the model; `trust_remote_code=True`
says you have read them:

```python
from transformers import pipeline
pipe = pipeline(model="path/to/this/folder", trust_remote_code=True)  # or its hub id
pipe(image="photo.jpg", text="a dog runs on the beach")  # every concept: label, score, predicted (at threshold)
```

`AutoModel`, `AutoProcessor` and `AutoConfig` load the parts the same way. With mm_classifier installed, its
`Predictor` reads only the JSON and safetensors files:

```python
import mm_classifier
predictor = mm_classifier.Predictor.from_pretrained("path/to/this/folder")
print(predictor.predict(["photo.jpg"], ["a dog runs on the beach"])[0].predicted)
```

## Intended use and limits

For teaching and demos of multimodal, multi-label classification. Concepts and their frequencies come from
the training data (`{dataset}`); photos unlike it are out of domain. Labels are what the data's captioners or
labellers chose to mention, not exhaustive annotations, so "not predicted" does not mean "absent". Concepts about
people (man, woman, boy, girl) reflect their judgements and are hard to tell from pixels; do not use this model to
make decisions about people.
"""
    (Path(directory) / "README.md").write_text(card)
