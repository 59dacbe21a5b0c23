"""The model card: the ``README.md`` of a saved model folder (hub metadata, concepts, data, metrics, limits)."""

from __future__ import annotations

from pathlib import Path

from .fusion import describe
from .reporting import SUMMARY_KEYS, format_metric

__all__ = ["write_model_card"]


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
library_name: transformers
pipeline_tag: image-classification
tags: [mm_classifier, multi-label, multimodal, flickr8k]
datasets: [flickr8k]
metrics: [f1, average_precision, roc_auc]
---

# mm_classifier: {config.modality} model

Predicts which of {config.num_labels} concepts appear in {modality}, each with a probability.
Backbone `{config.backbone}` at {config.image_size} px{mirror}; word-level BiLSTM caption encoder;
{describe(config)} (`modality={config.modality}`).

## Concepts

{", ".join(f"`{c}` (threshold {t:.2f})" for c, t in zip(config.concepts, config.thresholds, strict=True))}

A photo has a concept when at least {config.min_votes} of its captions name it (words per concept are in
`config.json`, `concept_words`). Training and test pairs are labelled leave-one-out: a caption never decides
its own label, so a caption-reading model cannot just spot keywords.

## Data

Trained on `{dataset}`; {results.get('train_rows', '?')} training rows; tested on {results.get('test_pairs', '?')}
(photo, caption) pairs of photos that training never saw (the split is by photo).

## Results (test split)

| metric | value |
|---|---:|
{metric_rows}

Best epoch {results.get('best_epoch')} of {results.get('epochs_run')}; {results.get('train_seconds')} s of training.

## Use

```python
import mm_classifier
predictor = mm_classifier.Predictor.from_pretrained("path/to/this/folder")
print(predictor.predict(["photo.jpg"], ["a dog runs on the beach"])[0].predicted)
```

## Intended use and limits

For teaching and demos of multimodal, multi-label classification. Concepts and their frequencies come from
Flickr8k captions: everyday scenes of people, dogs and outdoor places; other photos are out of domain. Labels
are what captioners chose to mention, not exhaustive annotations, so "not predicted" does not mean "absent".
Person concepts (man, woman, boy, girl) reflect captioners' judgements and are hard to tell from pixels; do not
use this model to make decisions about people.
"""
    (Path(directory) / "README.md").write_text(card)
