"""One processor for photos and captions: the only preprocessing path (training, evaluation, app, CLI)."""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature, PreTrainedTokenizerBase, PreTrainedTokenizerFast, ProcessorMixin
from transformers.dynamic_module_utils import custom_object_save
from transformers.image_processing_utils import BaseImageProcessor

from .configuration import IMAGENET_MEAN, IMAGENET_STD
from .errors import MMClassifierError

PROCESSOR_CONFIG_NAME = "processor_config.json"
MIN_IMAGE_SIDE = 8  # below this a "photo" carries no usable content

ImageInput = Any  # PIL image, numpy array (H, W[, C]), path, bytes, or a datasets {"path", "bytes"} dict


def load_image(image: ImageInput) -> Image.Image:
    """Open any supported image input as an RGB PIL image, EXIF orientation applied.

    Every kind of input of one photo gives the same pixels: a file or bytes is decoded at full size, as a PIL image
    or numpy array of it already was. Only a JPEG file or bytes with more pixels than PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) is decoded at reduced size, the least of libjpeg's 1/2, 1/4 and 1/8 scales
    that fits the limit, so a valid photo of up to twice that limit still loads.

    Raises:
        MMClassifierError: unreadable, corrupt, non-image, too small, or with more pixels to decode than the
            limit, counted after any reduced-size decode: a JPEG photo of up to twice the limit passes, a PNG
            claiming as many pixels does not, nor does a decoded image or array above the limit. Above twice the
            limit PIL refuses a file before any decode.
    """
    name = "image"
    try:
        with warnings.catch_warnings():
            # PIL warns on the file's nominal size between 1x and 2x its limit (and refuses above 2x); the bound
            # that matters is on the pixels decoded, checked below after any reduced-size decode.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(image, dict):  # datasets.Image(decode=False) value
                image = image.get("bytes") or image.get("path")
            if isinstance(image, (str, os.PathLike)):
                name = str(image)
                if not os.path.isfile(image):
                    raise MMClassifierError(f"Image file {name} does not exist.")
                pil = Image.open(image)
            elif isinstance(image, (bytes, bytearray)):
                pil = Image.open(io.BytesIO(image))
            elif isinstance(image, np.ndarray):
                pil = _from_array(image)
            elif isinstance(image, Image.Image):
                pil = image
            else:
                raise MMClassifierError(
                    f"Unsupported image input of type {type(image).__name__}: pass a PIL image, a numpy array "
                    "or a file path."
                )
            if pil.format == "JPEG" and pil is not image:  # never resize a caller's own image object
                _draft_within_bound(pil)
            if pil.width * pil.height > (Image.MAX_IMAGE_PIXELS or math.inf):
                raise MMClassifierError(
                    f"{name} is too large: {pil.width}x{pil.height} pixels to decode, above PIL's limit of "
                    f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb, or a photo to shrink first)."
                )
            if pil.width < MIN_IMAGE_SIDE or pil.height < MIN_IMAGE_SIDE:
                raise MMClassifierError(
                    f"{name} is {pil.width}x{pil.height} pixels: too small to classify "
                    f"(at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})."
                )
            if pil.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even when upright
                pil = ImageOps.exif_transpose(pil)
            return _to_rgb(pil)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MMClassifierError(
            f"{name} is too large ({err}); PIL refuses images above {Image.MAX_IMAGE_PIXELS} pixels."
        ) from None
    except UnidentifiedImageError:
        raise MMClassifierError(f"{name} is not an image PIL can read (JPEG, PNG, WebP, ...).") from None
    except OSError as err:  # truncated or corrupt data
        raise MMClassifierError(f"{name} is corrupt or truncated: {err}") from None


def _draft_within_bound(pil: Image.Image) -> None:
    """Let libjpeg decode a JPEG above the pixel bound at the least reduced scale (1/2, 1/4, 1/8) that fits it.

    Within the bound, nothing: a reduced-size decode gives other pixels than the full decode that a PIL image or
    numpy array of the same photo went through, and so other probabilities.
    """
    bound = Image.MAX_IMAGE_PIXELS or math.inf
    if pil.width * pil.height <= bound:
        return
    for scale in (2, 4, 8):
        if math.ceil(pil.width / scale) * math.ceil(pil.height / scale) <= bound:
            break
    # draft picks the largest scale that keeps both sides at least the size asked for: this one (or less, for a
    # side shorter than the scale).
    pil.draft("RGB", (max(1, pil.width // scale), max(1, pil.height // scale)))


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise MMClassifierError(f"A numpy image must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}.")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise MMClassifierError("The numpy image holds NaN or infinite values.")
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0  # floats in 0..1 or 0..255
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _batch_encoder(tokenizer, max_length: int):
    """A copy of a fast tokenizer's ``tokenizers.Tokenizer`` that pads to the longest caption and truncates to
    ``max_length`` by itself, as ``tokenizer(text, padding="longest", truncation=True, max_length=...)`` does.

    The ``transformers`` wrapper configures its backend on every call, which costs more than encoding one
    caption (benchmarks/inference.py). None for a tokenizer without a backend, or one padding on the left.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None or tokenizer.padding_side != "right" \
            or tokenizer.truncation_side != "right":
        return None
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(backend.to_str())
    encoder.enable_truncation(max_length=max_length)
    encoder.enable_padding(direction="right", pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    return encoder


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (RGBA, LA, P with transparency, CMYK, I;16, L, 1) -> RGB; transparency over white."""
    if image.mode == "RGB":
        image.load()
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = (array - array.min()) / max(array.max() - array.min(), 1e-12) * 255
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


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
        pil = load_image(image)
        pil = pil.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) from :meth:`resize_image` -> normalised float pixel values."""
        mean = torch.tensor(self.image_mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def preprocess(self, images, return_tensors: str | None = "pt") -> BatchFeature:
        """One image or a list of images (PIL, numpy, path, bytes) -> ``pixel_values`` (B, 3, S, S)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise MMClassifierError("The list of images is empty.")
        pixels = torch.stack([self.normalize_pixels(self.resize_image(image)) for image in images])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)


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
            data.update(self.image_processor(images, return_tensors=None))
        if text is not None:
            data.update(self.tokenize(text))
        if images is not None and text is not None and len(data["pixel_values"]) != len(data["input_ids"]):
            raise MMClassifierError(
                f"Got {len(data['pixel_values'])} images but {len(data['input_ids'])} captions; give one caption "
                "per image."
            )
        return BatchFeature(data, tensor_type=return_tensors)

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
        if isinstance(text, str):
            text = [text]
        text = list(text)
        if not text:
            raise MMClassifierError("The list of captions is empty.")
        bad = [type(t).__name__ for t in text if not isinstance(t, str)]
        if bad:
            raise MMClassifierError(f"Captions must be strings; got {bad[0]}.")
        encoder = self._fast_encoder()
        if encoder is not None:  # the same padding and truncation, without the wrapper's per-call set-up
            rows = encoder.encode_batch(text)
            encoded = {
                "input_ids": torch.tensor([row.ids for row in rows], dtype=torch.long).view(len(rows), -1),
                "attention_mask": torch.tensor([row.attention_mask for row in rows], dtype=torch.long).view(
                    len(rows), -1
                ),
            }
        else:
            encoded = self.tokenizer(
                text, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        # Every batch has at least one position, so an all-empty batch still has a (B, 1) shape.
        if encoded["input_ids"].shape[1] == 0:
            pad = self.tokenizer.pad_token_id
            return {
                "input_ids": torch.full((len(text), 1), pad, dtype=torch.long),
                "attention_mask": torch.zeros((len(text), 1), dtype=torch.long),
            }
        # A blank caption is no caption for every encoder, although a transformers tokenizer still gives it its
        # special tokens ([CLS] [SEP]): no position is attended, and the model embeds it as zeros.
        blank = torch.tensor([not t.strip() for t in text])
        attention_mask = encoded["attention_mask"].masked_fill(blank[:, None], 0)
        return {"input_ids": encoded["input_ids"], "attention_mask": attention_mask}

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
