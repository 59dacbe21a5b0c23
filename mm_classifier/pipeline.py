"""The ``multimodal-classification`` pipeline: photos and/or captions -> every concept's score, best first.

Saved into every model folder (``pipeline.py``), so ``pipeline(model=folder, trust_remote_code=True)`` runs it
without this package: it imports only transformers and torch.
"""

from __future__ import annotations

import torch
from transformers import Pipeline

PIPELINE_TASK = "multimodal-classification"


class MultiModalClassificationPipeline(Pipeline):
    """Which concepts are in a scene, from a photo, its caption, or both.

    Takes inputs the way the visual-question-answering pipeline does: ``pipe(image=..., text=...)``, a dict
    ``{"image": ..., "text": ...}`` or a list of such dicts (either key may be missing; a bare image counts as
    ``{"image": ...}``). An image is a path, a PIL image, a numpy array or bytes. An input the model does not
    read (a photo for a text-only model) is ignored.

    Returns, per input, a list of ``{"label", "score", "predicted"}`` for every concept, sorted by score (the
    model's probabilities: calibrated, then a sigmoid per concept, or a softmax over a single-label model's
    classes). ``predicted``: multi-label, whether the score reaches the concept's threshold (by default the
    model's tuned per-concept thresholds, ``config.thresholds``); single-label, True for the most probable class.

    Call options: ``top_k`` (keep the best k concepts; default all), ``threshold`` (multi-label: one number for every
    concept, or one per concept, instead of the tuned thresholds), ``batch_size``.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, inputs=None, image=None, text=None, **kwargs):
        if image is not None or text is not None:
            if inputs is not None and (image is not None or isinstance(inputs, (dict, list))):
                raise ValueError("Give the inputs either as dicts or as image= and text=, not both.")
            inputs = _pair(image if inputs is None else inputs, text)
        elif inputs is None:
            raise ValueError("Give a photo (image=...), a caption (text=...), or both.")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, top_k=None, threshold=None):
        postprocess = {}
        if top_k is not None:
            postprocess["top_k"] = int(top_k)
        if threshold is not None:
            postprocess["thresholds"] = self._thresholds(threshold)
        return {}, {}, postprocess

    def _thresholds(self, threshold) -> list[float]:
        if self.model.config.single_label:
            raise ValueError("This single-label model predicts its most probable class: thresholds do not apply.")
        count = self.model.config.num_labels
        if isinstance(threshold, (int, float)):
            return [float(threshold)] * count
        if len(threshold) != count:
            raise ValueError(f"Give one threshold, or {count} (one per concept); got {len(threshold)}.")
        return [float(t) for t in threshold]

    def preprocess(self, item) -> dict[str, torch.Tensor]:
        """One input -> the model's tensors; a missing photo or caption is a placeholder that ``has_*`` masks."""
        image, text = (item.get("image"), item.get("text")) if isinstance(item, dict) else (item, None)
        config = self.model.config
        has_image = image is not None and config.uses_image
        has_text = text is not None and config.uses_text
        if not has_image and not has_text:
            needed = {"fusion": "a photo or a caption", "image": "a photo", "text": "a caption"}[config.modality]
            raise ValueError(f"This {config.modality} model needs {needed}; the input has none.")
        inputs = {}
        if config.uses_image:
            size = self.processor.image_processor.image_size
            pixels = self.processor(images=image)["pixel_values"] if has_image else torch.zeros(1, 3, size, size)
            inputs.update(pixel_values=pixels.to(self.dtype), has_image=torch.tensor([has_image]))
        if config.uses_text:
            tokens = self.processor(text=text) if has_text else {
                "input_ids": torch.zeros(1, 1, dtype=torch.long), "attention_mask": torch.zeros(1, 1, dtype=torch.long)}
            inputs.update(tokens, has_text=torch.tensor([has_text]))
        return inputs

    def _forward(self, inputs) -> dict[str, torch.Tensor]:
        image_embeds = text_embeds = None
        if "pixel_values" in inputs:
            image_embeds = _embed(self.model.encode_image, inputs["has_image"], inputs["pixel_values"])
        if "input_ids" in inputs:
            text_embeds = _embed(self.model.encode_text, inputs["has_text"], inputs["input_ids"],
                                 inputs["attention_mask"])
        return {"logits": self.model(image_embeds=image_embeds, text_embeds=text_embeds).logits}

    def postprocess(self, outputs, top_k=None, thresholds=None) -> list[dict]:
        config = self.model.config
        scores = self.model.probabilities(outputs["logits"][:1])[0].tolist()
        if config.single_label:
            best = max(range(len(scores)), key=scores.__getitem__)
            predicted = [index == best for index in range(len(scores))]
        else:
            thresholds = config.thresholds if thresholds is None else thresholds
            predicted = [score >= threshold for score, threshold in zip(scores, thresholds, strict=True)]
        results = [
            {"label": config.id2label[index], "score": score, "predicted": chosen}
            for index, (score, chosen) in enumerate(zip(scores, predicted, strict=True))
        ]
        results.sort(key=lambda result: result["score"], reverse=True)
        return results[:top_k] if top_k is not None else results


def _pair(image, text):
    """``image=`` / ``text=`` arguments -> one input dict, or a list when either is a list (a single one repeats)."""
    if not isinstance(image, (list, tuple)) and not isinstance(text, (list, tuple)):
        return {"image": image, "text": text}
    count = len(image) if isinstance(image, (list, tuple)) else len(text)
    images = image if isinstance(image, (list, tuple)) else [image] * count
    texts = text if isinstance(text, (list, tuple)) else [text] * count
    if len(images) != len(texts):
        raise ValueError(f"Got {len(images)} photos but {len(texts)} captions.")
    return [{"image": i, "text": t} for i, t in zip(images, texts, strict=True)]


def _embed(encode, present: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | None:
    """``encode`` the examples that have this input; zeros for the others (as the model treats a missing one).

    Args:
        present: (B,) bool, which examples have the input.
    """
    if not present.any():
        return None
    if present.all():
        return encode(*tensors)
    embeds = encode(*(tensor[present] for tensor in tensors))  # (b, D)
    full = embeds.new_zeros(len(present), embeds.shape[1])  # (B, D)
    full[present] = embeds
    return full
