"""Photos as the model sees them, without torch: any input (a path, bytes, a PIL image, a numpy array) decoded once
to RGB by one policy, then squashed to the model's square size. Both backends (PyTorch, ONNX) read photos here."""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import MMClassifierError

MIN_IMAGE_SIDE = 8  # below this a "photo" carries no usable content
# A file above PIL's pixel limit with fewer bytes per pixel than this holds no photo that large (a photo compresses
# to 0.3 byte per pixel or more, a decompression bomb to a few thousandths): it is refused, not decoded.
MIN_BYTES_PER_PIXEL = 0.1

ImageInput = Any  # PIL image, numpy array (H, W[, C]), path, bytes, or a datasets {"path", "bytes"} dict


def load_image(image: ImageInput) -> Image.Image:
    """Open any supported image input as an RGB PIL image, EXIF orientation applied.

    Every kind of input of one photo gives the same pixels: a file or bytes is decoded at full size, as a PIL image
    or numpy array of it already was. Only a file or bytes with more pixels than PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) is reduced, so a valid photo of up to twice that limit still loads: a JPEG
    decoded at the least of libjpeg's 1/2, 1/4 and 1/8 scales that fits the limit, another format (PNG, WebP,
    TIFF, ...) decoded whole and shrunk by the least whole factor that fits (:func:`too_large` says which files
    are decoded at all).

    Raises:
        MMClassifierError: unreadable, corrupt, non-image, too small, or :func:`too_large`. Above twice the limit
            PIL refuses a file before any decode.
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
                if not os.path.isfile(image):  # also a folder, a pipe (open would block) or a name with a NUL
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
            decoded_here = pil is not image  # never resize a caller's own image object
            if pil.format == "JPEG" and decoded_here:
                _draft_within_bound(pil)
            if too_large(pil, image if decoded_here else None):
                raise MMClassifierError(
                    f"{name} is too large: {pil.width}x{pil.height} pixels to decode, above PIL's limit of "
                    f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb, or a photo to shrink first)."
                )
            pil = _reduced_within_bound(pil)
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


def source_size(source) -> int | None:
    """The bytes of a photo file (a path) or of encoded bytes; None for anything else."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source)
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    if isinstance(source, io.BytesIO):
        return source.getbuffer().nbytes
    return None


def too_large(pil: Image.Image, source=None) -> bool:
    """More pixels to decode than PIL's limit (after any JPEG draft), unless the image was opened from ``source``, a
    file or bytes (:func:`source_size`) holding at least :data:`MIN_BYTES_PER_PIXEL` per pixel: a valid photo,
    decoded within PIL's own bound of twice the limit. A decompression bomb (a small PNG claiming huge dimensions)
    and a caller's image or array above the limit (no ``source``) are too large. Only an image above the limit
    has its source's size read."""
    pixels = pil.width * pil.height
    if pixels <= (Image.MAX_IMAGE_PIXELS or math.inf):
        return False
    file_bytes = None if source is None else source_size(source)
    return file_bytes is None or file_bytes < MIN_BYTES_PER_PIXEL * pixels


def _reduced_within_bound(pil: Image.Image) -> Image.Image:
    """An image above the pixel limit that :func:`too_large` let through, decoded and shrunk (box filter) by the
    least whole factor that fits the limit; any other image as it is."""
    bound = Image.MAX_IMAGE_PIXELS or math.inf
    if pil.width * pil.height <= bound:
        return pil
    factor = 2
    while math.ceil(pil.width / factor) * math.ceil(pil.height / factor) > bound:
        factor += 1
    return pil.reduce(factor)


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


def resized_pixels(image: ImageInput, size: int) -> np.ndarray:
    """One image -> (size, size, 3) uint8 (read-only), squashed to a square (bilinear), as the common Flickr8k copies
    are. A photo already at that size is not resized: PIL's resize to the same size is a copy."""
    pil = load_image(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(pil, dtype=np.uint8)


def normalized_pixels(images, size: int, mean, std) -> np.ndarray:
    """One image or a list of images (any :data:`ImageInput`) -> (B, 3, size, size) float32 pixel values, as both
    backends feed their model: :func:`resized_pixels`, scaled to 0..1, less ``mean``, divided by ``std`` (per
    channel). These are the float32 operations of the training path
    (``MultiModalImageProcessor.normalize_pixels``), so the values are the same."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise MMClassifierError("The list of images is empty.")
    pixels = np.array([resized_pixels(image, size) for image in images])  # (B, S, S, 3) uint8; np.stack costs more
    # Channels first in the conversion's own copy, before the arithmetic: numpy then runs along rows of S*S values,
    # not of 3 (3x faster). In place, each step is the training path's float32 operation without a new array.
    values = pixels.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    values /= np.float32(255.0)
    values -= np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    values /= np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return values
