"""One processor for photos and captions: the only preprocessing path (training, evaluation, app, CLI)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerBase, PreTrainedTokenizerFast, ProcessorMixin
from transformers.dynamic_module_utils import custom_object_save
from transformers.image_processing_utils import BaseImageProcessor

from .configuration import IMAGENET_MEAN, IMAGENET_STD
from .errors import MMClassifierError
from .images import ImageInput, normalized_pixels, resized_pixels
from .tokens import batch_encoder, blank_captions_masked, check_captions, encode_captions

PROCESSOR_CONFIG_NAME = "processor_config.json"


def _batch_encoder(tokenizer, max_length: int):
    """:func:`~mm_classifier.tokens.batch_encoder` for a fast tokenizer: its ``tokenizers.Tokenizer``, padding and
    truncating by itself. The ``transformers`` wrapper configures its backend on every call, which costs more than
    encoding one caption (benchmarks/inference.py). None for a tokenizer without a backend, or one padding on the
    left."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None or tokenizer.padding_side != "right" \
            or tokenizer.truncation_side != "right":
        return None
    return batch_encoder(backend, max_length, tokenizer.pad_token_id, tokenizer.pad_token)


class MultiModalImageProcessor(BaseImageProcessor):
    """Photos -> ``pixel_values`` (B, 3, S, S): squashed to S x S (bilinear), scaled to 0..1 and normalised.

    Registered for ``AutoImageProcessor``; :class:`MultiModalProcessor` pairs it with the caption tokenizer.
    ``**kwargs`` keeps what transformers adds to a saved image processor (``auto_map``).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 224, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]

    def resize_image(self, image: ImageInput) -> torch.Tensor:
        """One image -> (3, S, S) uint8 tensor, squashed to S x S (as the common Flickr8k copies are).

        Training caches this output, which is 4x smaller than the float pixel values.
        """
        return torch.from_numpy(np.array(resized_pixels(image, self.image_size))).permute(2, 0, 1)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) from :meth:`resize_image` -> normalised float pixel values."""
        mean = torch.tensor(self.image_mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def pixel_values(self, images) -> torch.Tensor:
        """One image or a list of images (PIL, numpy, path, bytes) -> normalised pixel values (B, 3, S, S).

        numpy computes them (:func:`~mm_classifier.images.normalized_pixels`, which the ONNX backend shares): on one
        small photo each torch operation costs more than its arithmetic (benchmarks/inference.py).
        """
        return torch.from_numpy(normalized_pixels(images, self.image_size, self.image_mean, self.image_std))

    def preprocess(self, images, return_tensors: str | None = "pt") -> BatchFeature:
        """One image or a list of images (PIL, numpy, path, bytes) -> ``pixel_values`` (B, 3, S, S)."""
        return BatchFeature({"pixel_values": self.pixel_values(images)}, tensor_type=return_tensors)


class MultiModalProcessor(ProcessorMixin):
    """Turns photos and captions into the batch a :class:`MultiModalClassifier` reads.

    ``processor(images=..., text=...)`` returns a ``BatchFeature`` with ``pixel_values`` (B, 3, S, S) and/or
    ``input_ids`` / ``attention_mask`` (B, T); either argument may be None.

    Args:
        tokenizer: the caption tokenizer (:func:`~mm_classifier.build_tokenizer`), or None for photos only.
        image_processor: the photo transform; default: a :class:`MultiModalImageProcessor` with ``image_size``,
            ``image_mean`` and ``image_std`` (give either those or an image processor).
        max_length: captions are truncated to this many tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None,
                 image_processor: MultiModalImageProcessor | None = None, max_length: int = 32,
                 image_size: int | None = None, image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None):
        # Not ProcessorMixin.__init__: it refuses a missing part, and a photos-only processor has no tokenizer.
        image_settings = {key: value for key, value in
                          (("image_size", image_size), ("image_mean", image_mean), ("image_std", image_std))
                          if value is not None}
        if image_processor is None:
            image_processor = MultiModalImageProcessor(**image_settings)
        elif image_settings:
            raise MMClassifierError(f"Give an image_processor or {', '.join(image_settings)}, not both.")
        self.chat_template = None
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = int(max_length)
        self._encoder, self._encoder_for = None, None  # see _fast_encoder

    @classmethod
    def from_config(cls, config, tokenizer: PreTrainedTokenizerBase | None = None) -> MultiModalProcessor:
        """A processor matching a model config's image size, normalisation and caption length."""
        image_processor = MultiModalImageProcessor(config.image_size, config.image_mean, config.image_std)
        return cls(tokenizer, image_processor, config.max_length)

    # ------------------------------------------------------------------------------------------ images

    @property
    def image_size(self) -> int:
        return self.image_processor.image_size

    def resize_image(self, image: ImageInput) -> torch.Tensor:
        """One image -> (3, S, S) uint8: :meth:`MultiModalImageProcessor.resize_image`."""
        return self.image_processor.resize_image(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) from :meth:`resize_image` -> normalised float pixel values."""
        return self.image_processor.normalize_pixels(pixels)

    # ------------------------------------------------------------------------------------------ batches

    def __call__(self, images=None, text=None, return_tensors: str = "pt") -> BatchFeature:
        """Preprocess a batch (or one item) of photos and/or captions.

        Args:
            images: one image or a list of images (PIL, numpy, path, bytes), or None.
            text: one caption or a list of captions, or None. Empty captions are allowed (no tokens).
        """
        if images is None and text is None:
            raise MMClassifierError("Give a photo, a caption, or both: the processor got neither.")
        data: dict[str, Any] = {}
        if images is not None:
            data["pixel_values"] = self.image_processor.pixel_values(images)
        if text is not None:
            data.update(self.tokenize(text))
        if images is not None and text is not None and len(data["pixel_values"]) != len(data["input_ids"]):
            raise MMClassifierError(
                f"Got {len(data['pixel_values'])} images but {len(data['input_ids'])} captions; give one caption "
                "per image."
            )
        # The values are torch tensors already: no conversion for "pt" (it checks each value, benchmarks/inference.py).
        return BatchFeature(data, tensor_type=None if return_tensors == "pt" else return_tensors)

    def _fast_encoder(self):
        """:func:`_batch_encoder` for the current tokenizer and max_length, rebuilt when either is replaced."""
        wanted = (id(self.tokenizer), self.max_length)
        if self._encoder_for != wanted:
            self._encoder, self._encoder_for = _batch_encoder(self.tokenizer, self.max_length), wanted
        return self._encoder

    def tokenize(self, text) -> dict[str, torch.Tensor]:
        """Caption(s) -> ``input_ids`` and ``attention_mask`` (B, T), padded and truncated to max_length."""
        if self.tokenizer is None:
            raise MMClassifierError("This processor has no tokenizer, so it cannot read captions.")
        text = check_captions(text)
        encoder = self._fast_encoder()
        if encoder is not None:  # the same padding and truncation, without the wrapper's per-call set-up
            ids, mask = encode_captions(encoder, text)
        else:
            encoded = self.tokenizer(text, padding="longest", truncation=True, max_length=self.max_length,
                                     return_tensors="np")
            ids, mask = blank_captions_masked(text, encoded["input_ids"].astype(np.int64),
                                              encoded["attention_mask"].astype(np.int64), self.tokenizer.pad_token_id)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    # ------------------------------------------------------------------------------------------ save/load

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """Write ``processor_config.json``, the tokenizer's files and the code that loads them without this
        package (this module, the pipeline's and what they import: see docs/model_folder.md)."""
        if self.tokenizer is None:
            raise MMClassifierError("This processor has no tokenizer: a saved model folder needs one to read captions.")
        from .pipeline import MultiModalClassificationPipeline  # the pipeline reads this processor, never imports it

        files = super().save_pretrained(save_directory, **kwargs)
        custom_object_save(MultiModalClassificationPipeline, save_directory)
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> MultiModalProcessor:
        """Load a processor written by :meth:`save_pretrained`: a folder, or a hub id through transformers.

        A folder is read as JSON and ``tokenizer.json`` only, with this module's classes: no class named in its
        files is looked up, so its code files are never run. Folders written before the processor was a
        ``ProcessorMixin`` (image settings at the top of ``processor_config.json``) load too.
        """
        folder = Path(pretrained_model_name_or_path)
        name = str(pretrained_model_name_or_path)
        if not folder.is_dir() and name.count("/") == 1 and not name.startswith((".", "/", "~")):  # a hub id
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        path = folder / PROCESSOR_CONFIG_NAME
        if not path.is_file():
            raise MMClassifierError(f"{folder} has no {PROCESSOR_CONFIG_NAME}: it is not a saved mm_classifier model.")
        try:
            settings = json.loads(path.read_text())
            image_settings = settings.get("image_processor", settings)
            image_processor = MultiModalImageProcessor(
                image_settings["image_size"], image_settings["image_mean"], image_settings["image_std"]
            )
            max_length = int(settings["max_length"])
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            raise MMClassifierError(f"{path} is not a valid processor configuration ({err}).") from None
        tokenizer = None
        if (folder / "tokenizer.json").is_file():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        return cls(tokenizer, image_processor, max_length)


# A saved processor names this file in its auto_map, so AutoProcessor / AutoImageProcessor load it (trust_remote_code).
MultiModalImageProcessor.register_for_auto_class()
MultiModalProcessor.register_for_auto_class()
