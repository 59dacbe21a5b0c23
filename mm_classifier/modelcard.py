"""The model card: the ``README.md`` of a saved model folder (hub metadata, concepts, data, metrics, calibration,
limits)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import transformers
from huggingface_hub import EvalResult, ModelCardData

from .fusion import describe
from .pipeline import PIPELINE_TASK
from .reporting import SINGLE_LABEL_SUMMARY_KEYS, SUMMARY_KEYS, format_metric
from .sample import BUILT_IN
from .serving import text_encoder_description
from .sources import looks_like_hub_id

__all__ = ["card_metadata", "write_model_card"]

# The Hub has no task for "photo and caption -> concepts"; the model runs in its own pipeline (pipeline.py).
PIPELINE_TAG = "other"


def card_metadata(config, results: dict, dataset: str) -> ModelCardData:
    """The YAML front matter the Hub reads: library, task, tags, data set and the test figures (model-index).

    The Hub reads ``datasets`` and a result's data set ``type`` as data set ids on the Hub, so both are there only
    when the model was trained on a hub data set: a local folder or file, or the built-in sample, has no id (the
    card's text names it), and its test figures stay in the card's results table.

    Args: as :func:`write_model_card`.
    """
    dataset_id = _hub_dataset(dataset)
    task = "Single-label classification" if config.single_label else "Multi-label concept classification"
    figures = [
        EvalResult(task_type=PIPELINE_TAG, task_name=task, dataset_type=dataset_id, dataset_name=dataset_id,
                   dataset_split="test", metric_type=key, metric_name=label,
                   metric_value=round(results["test_" + key], 4))
        for key, label in _summary_keys(config) if results.get("test_" + key) is not None
    ] if dataset_id else []
    problem = "single-label-classification" if config.single_label else "multi-label-classification"
    metrics = ["f1", "average_precision", "roc_auc"]
    return ModelCardData(
        library_name="transformers", pipeline_tag=PIPELINE_TAG,
        tags=["mm_classifier", PIPELINE_TASK, problem, "multimodal"],
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy", *metrics] if config.single_label else metrics,
        model_name=f"mm_classifier-{config.modality}" if figures else None, eval_results=figures or None,
    )


def _hub_dataset(dataset: str) -> str | None:
    """The data set's hub id: itself for a hub id that is no local path; None for a local folder or file and for
    the built-in data sets."""
    if dataset in BUILT_IN or not looks_like_hub_id(dataset) or Path(dataset).expanduser().exists():
        return None
    return dataset


def _summary_keys(config) -> tuple:
    return SINGLE_LABEL_SUMMARY_KEYS if config.single_label else SUMMARY_KEYS


def data_description(dataset: str) -> str:
    """The training data as the card's text names it: "`owner/name`, a data set on the Hub", "`data/flickr8k`, a
    local folder or file" or "`sample`, mm_classifier's built-in synthetic sample"."""
    if dataset in BUILT_IN:
        return f"`{dataset}`, mm_classifier's built-in synthetic sample (not on the Hub)"
    if _hub_dataset(dataset):
        return f"`{dataset}`, a data set on the Hub"
    return f"`{dataset}`, a local folder or file (not on the Hub)"


def labelling(config) -> str:
    """How the training pairs were labelled: mined from captions leave-one-out, or given with the data."""
    if config.concept_words is None:
        return (
            "The labels were given with the data and used as given: every caption of a photo is paired with the "
            "photo's labels,\nso no caption decides a label."
        )
    return (
        f"A photo has a concept when at least {config.min_votes} of its captions name it (words per concept are in\n"
        "`config.json`, `concept_words`). Training and test pairs are labelled leave-one-out: a caption never "
        "decides\nits own label, so a caption-reading model cannot just spot keywords."
    )


def problem_description(config, reads: str) -> str:
    """The card's first sentence: what the model predicts from ``reads``, single-label or multi-label."""
    if config.single_label:
        return (f"Predicts which one of {config.num_labels} classes {reads} belongs to, each with a probability: "
                "single-label,\nexactly one class per input, the most probable one (a softmax over the classes).")
    return (f"Predicts which of {config.num_labels} concepts appear in {reads}, each with a probability: multi-label, "
            "any number\nof concepts per input, each predicted at or above its own threshold.")


def concepts_section(config) -> str:
    """The classes (single-label), or the concepts with their tuned thresholds (multi-label)."""
    if config.single_label:
        return "## Classes\n\n" + ", ".join(f"`{c}`" for c in config.concepts)
    return "## Concepts\n\n" + ", ".join(
        f"`{c}` (threshold {t:.2f})" for c, t in zip(config.concepts, config.thresholds, strict=True))


def calibration_section(config, results: dict) -> str:
    """The test split's expected calibration error before and after calibration, when training recorded it."""
    before, after = results.get("test_ece_uncalibrated"), results.get("test_ece")
    if before is None or after is None:
        return ""
    how = ("one temperature for every class, before the softmax" if config.single_label else
           "a temperature and a bias per concept, before its sigmoid (Platt scaling)")
    return (
        f"## Calibration\n\nThe probabilities are calibrated: {how}, fitted on the validation split\n"
        "(`calibration_temperatures` and `calibration_biases` in `config.json`). Expected calibration error on the "
        "test split: "
        f"{format_metric(before)} before\ncalibration, {format_metric(after)} after.\n\n"
    )


def use_section(config) -> str:
    """How to load the folder: transformers' pipeline and Auto classes, or mm_classifier's Predictor."""
    pipeline_predicted = "the most probable class" if config.single_label else "at threshold"
    return f"""## Use

With transformers, timm, torch, tokenizers and pillow installed (not mm_classifier; this folder was saved with
transformers {transformers.__version__}, timm {timm.__version__} and torch {torch.__version__}), its own code files
(`modeling.py`, `processing.py`, `pipeline.py` and what they import) run the model; `trust_remote_code=True`
says you have read them:

```python
from transformers import pipeline
pipe = pipeline(model="path/to/this/folder", trust_remote_code=True)  # or its hub id
pipe(image="photo.jpg", text="a dog runs on the beach")  # every concept: label, score, predicted ({pipeline_predicted})
```

`AutoModel`, `AutoProcessor` and `AutoConfig` load the parts the same way. With mm_classifier installed, its
`Predictor` reads only the JSON and safetensors files:

```python
import mm_classifier
predictor = mm_classifier.Predictor.from_pretrained("path/to/this/folder")
print(predictor.predict(["photo.jpg"], ["a dog runs on the beach"])[0].predicted)
```"""


def limits_section(config, dataset: str) -> str:
    """Intended use, and what the labels do and do not say."""
    problem = "single-label" if config.single_label else "multi-label"
    not_predicted = (
        "Every input gets one of these classes, even one that shows none of them." if config.single_label else
        "Labels are what the data's captioners or\nlabellers chose to mention, not exhaustive annotations, so "
        '"not predicted" does not mean "absent".'
    )
    return f"""## Intended use and limits

For teaching and demos of multimodal, {problem} classification. Concepts and their frequencies come from
the training data (`{dataset}`); photos unlike it are out of domain. {not_predicted}
Concepts about people (man, woman, boy, girl) reflect their judgements and are hard to tell from pixels; do not use
this model to make decisions about people."""


def write_model_card(directory: Path, config, results: dict, dataset: str) -> None:
    """Write the model card ``README.md`` into a saved model's folder.

    Args:
        directory: the model folder.
        config: the model's :class:`~mm_classifier.MultiModalConfig` (modality, fusion, problem type, concepts,
            thresholds, calibration).
        results: training's results: ``test_<key>`` for each key of :data:`~mm_classifier.reporting.SUMMARY_KEYS`
            (single-label: ``SINGLE_LABEL_SUMMARY_KEYS``; missing ones are left out of the table), ``test_ece`` and
            ``test_ece_uncalibrated``, ``train_rows``, ``test_pairs``, ``best_epoch``, ``epochs_run`` and
            ``train_seconds``.
        dataset: the training data set, as given to ``train.py``.
    """
    modality = {"fusion": "a photo and/or its caption", "image": "a photo", "text": "a caption"}[config.modality]
    mirror = " (a photo's embedding is the mean of its own and its mirror image's)" if (
        config.uses_image and config.image_mirror_average) else ""
    metric_rows = "\n".join(
        f"| {label} | {format_metric(results.get('test_' + key))} |"
        for key, label in _summary_keys(config) if "test_" + key in results
    )
    card = f"""---
{card_metadata(config, results, dataset).to_yaml()}
---

# mm_classifier: {config.modality} model

{problem_description(config, modality)}
Backbone `{config.backbone}` at {config.image_size} px{mirror}; {text_encoder_description(config)};
{describe(config)} (`modality={config.modality}`).

{concepts_section(config)}

{labelling(config)}

## Data

Trained on {data_description(dataset)}; {results.get('train_rows', '?')} training rows; tested on
{results.get('test_pairs', '?')} (photo, caption) pairs of photos that training never saw (the split is by photo).

## Results (test split)

| metric | value |
|---|---:|
{metric_rows}

Best epoch {results.get('best_epoch')} of {results.get('epochs_run')}; {results.get('train_seconds')} s of training.

{calibration_section(config, results)}{use_section(config)}

{limits_section(config, dataset)}
"""
    (Path(directory) / "README.md").write_text(card)
