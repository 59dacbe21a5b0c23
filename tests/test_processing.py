import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor

from mm_classifier import MMClassifierError, MultiModalImageProcessor, MultiModalProcessor, build_tokenizer, load_image
from mm_classifier.configuration import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture
def processor():
    tokenizer = build_tokenizer(["a dog on the beach", "a man"] * 2, min_frequency=1)
    return MultiModalProcessor(tokenizer, image_size=32, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


def test_batch_keys_shapes_and_either_argument_alone(processor, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), "white").save(path)
    batch = processor(images=[path, np.zeros((20, 30, 3), np.uint8)], text=["a dog", ""])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 2)
    assert batch["attention_mask"][1].sum() == 0
    # Normalisation: white -> +1, black -> -1 with mean = std = 0.5.
    assert torch.allclose(batch["pixel_values"][0], torch.ones(3, 32, 32))
    assert torch.allclose(batch["pixel_values"][1], -torch.ones(3, 32, 32))
    assert set(processor(text="a man")) == {"input_ids", "attention_mask"}
    assert set(processor(images=Image.new("RGB", (9, 9)))) == {"pixel_values"}
    with pytest.raises(MMClassifierError, match="neither"):
        processor()
    with pytest.raises(MMClassifierError, match="one caption per image"):
        processor(images=[path, path], text=["one"])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "F"])
def test_every_image_mode_becomes_rgb(mode):
    image = Image.new(mode, (16, 16))
    assert load_image(image).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_bad_images_raise_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "text.jpg").write_text("not an image")
    good = io.BytesIO()
    Image.new("RGB", (100, 100), "red").save(good, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.getvalue()[:300])
    os.mkfifo(tmp_path / "pipe.jpg")
    cases = [
        (tmp_path / "missing.jpg", "does not exist"),
        (tmp_path, "does not exist"),  # a folder
        (tmp_path / "text.jpg" / "photo.jpg", "does not exist"),  # under a file
        (tmp_path / "pipe.jpg", "does not exist"),  # a named pipe: opening it would wait for a writer
        (f"{tmp_path}/nul\0.jpg", "does not exist"),
        (tmp_path / "text.jpg", "not an image"),
        (tmp_path / "cut.jpg", "corrupt or truncated"),
        (Image.new("RGB", (1, 1)), "too small"),
        (Image.new("RGB", (0, 0)), "too small"),
        (np.zeros((20, 20, 7)), "numpy image"),
        (12, "Unsupported image input"),
    ]
    for value, message in cases:
        with pytest.raises(MMClassifierError, match=message):
            load_image(value)


def test_the_pixel_bound_is_on_the_pixels_decoded_and_loading_agrees(tmp_path, monkeypatch):
    from mm_classifier.photo_rows import photo_problem

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    processor = MultiModalProcessor(None, image_size=16)
    for side in (50, 40, 30):
        for suffix in ("png", "jpg"):
            Image.new("RGB", (side, side), "red").save(tmp_path / f"big{side}.{suffix}")
    # Above twice PIL's limit a file is refused outright. Below that, a JPEG above the limit is decoded at reduced
    # size (JPEG draft: 40x40 at 1/2 scale, 400 pixels) and passes, as a valid 90-megapixel photo does under PIL's
    # real limit; as a flat PNG (a few bytes: a decompression bomb's make), or already decoded, the same pixel
    # count is refused. Within the limit nothing is reduced (30x30, 900 pixels).
    loads = (load_image, processor.resize_image)
    refused = [(load, tmp_path / f"big50.{suffix}") for load in loads for suffix in ("png", "jpg")]
    refused += [(load, tmp_path / "big40.png") for load in loads]
    refused += [(load, np.asarray(Image.open(tmp_path / "big40.jpg"))) for load in loads]
    for load, image in refused:
        with pytest.raises(MMClassifierError, match="too large"):
            load(image)
    assert load_image(tmp_path / "big40.jpg").size == (20, 20)
    assert load_image((tmp_path / "big40.jpg").read_bytes()).size == (20, 20)
    assert processor.resize_image(tmp_path / "big40.jpg").shape == (3, 16, 16)
    assert load_image(tmp_path / "big30.jpg").size == (30, 30)
    # A PNG above the limit whose file holds a photo's worth of bytes (noise: 3 bytes per pixel, where the flat
    # red one above has 0.06, as a decompression bomb has less) is decoded whole, then halved to fit.
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise40.png")
    halved = np.asarray(Image.fromarray(noise).reduce(2))
    for image in (tmp_path / "noise40.png", (tmp_path / "noise40.png").read_bytes()):
        np.testing.assert_array_equal(np.asarray(load_image(image)), halved)
    assert processor.resize_image(tmp_path / "noise40.png").shape == (3, 16, 16)
    with pytest.raises(MMClassifierError, match="too large"):  # the same pixels already decoded: the caller's
        load_image(noise)
    # Loading a data set makes the same decision, so a photo it accepts never stops feature caching later.
    names = ("50.png", "50.jpg", "40.png", "40.jpg")
    assert [photo_problem(tmp_path / f"big{n}") is None for n in names] == [False, False, False, True]
    assert photo_problem(tmp_path / "noise40.png") is None


def realistic_jpeg(path, size=(500, 375)):
    """A photo-like JPEG (Flickr8k's usual size): smooth gradients, a few shapes and sensor noise, quality 90."""
    rng = np.random.default_rng(1)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [128 + 100 * np.sin(x / 37 + phase) * np.cos(y / 23 - phase) for phase in (0.0, 1.3, 2.6)]
    array = np.stack(channels, axis=-1)
    array[(x - 300) ** 2 + (y - 150) ** 2 < 60**2] = (220, 40, 30)  # a red disc with sharp edges
    array[250:330, 40:200] = (20, 30, 160)
    array += rng.normal(0, 12, array.shape)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def every_kind_of_input(path):
    """One photo as a path, a str, bytes, a datasets dict, an opened PIL image, a decoded one and a numpy array."""
    data = path.read_bytes()
    return {"path": path, "str": str(path), "bytes": data, "datasets dict": {"bytes": data, "path": None},
            "Image.open": Image.open(path), "load_image": load_image(path),
            "numpy": np.asarray(Image.open(path).convert("RGB"))}


@pytest.mark.parametrize("image_size", [32, 64, 224])
def test_every_kind_of_input_of_one_photo_gives_the_same_pixels(tmp_path, image_size):
    # At small sizes a reduced-size JPEG decode (libjpeg's 1/4 or 1/8 scale) would give a file other pixels than
    # the PIL image or numpy array of the same photo, and other probabilities.
    path = realistic_jpeg(tmp_path / "photo.jpg")
    processor = MultiModalProcessor(None, image_size=image_size)
    expected = processor(images=path)["pixel_values"]
    for kind, image in every_kind_of_input(path).items():
        assert torch.equal(processor(images=image)["pixel_values"], expected), kind
    assert load_image(path).size == (500, 375)  # decoded at full size


def test_every_kind_of_input_of_one_photo_gives_the_same_probabilities(tmp_path, predictor):
    from transformers import pipeline

    from mm_classifier import PIPELINE_TASK

    path = realistic_jpeg(tmp_path / "photo.jpg")
    caption = "a dog runs on the beach"
    inputs = every_kind_of_input(path)
    expected = predictor.predict(path, caption)[0].probabilities
    pipe = pipeline(PIPELINE_TASK, model=predictor.model, processor=predictor.processor, device="cpu")
    for kind, image in inputs.items():
        for got in (predictor.predict(image, caption)[0].probabilities,
                    {result["label"]: result["score"] for result in pipe(image=image, text=caption)}):
            assert got.keys() == expected.keys()
            assert max(abs(got[concept] - expected[concept]) for concept in expected) <= 1e-4, kind


def test_tokenize_pads_and_truncates_exactly_like_the_tokenizer_call():
    tokenizer = build_tokenizer(["a dog on the beach", "a man in a red shirt"] * 2, min_frequency=1)
    processor = MultiModalProcessor(tokenizer, max_length=4)
    captions = ["a dog", "", "A MAN in a red shirt on the beach", "zebra!!  ", "dog", "é a\tman"]
    for batch in (captions, captions[:1], captions[1:2], ["", ""], captions[2:3]):
        expected = tokenizer(batch, padding="longest", truncation=True, max_length=4, return_tensors="pt")
        got = processor.tokenize(batch)
        width = max(1, expected["input_ids"].shape[1])  # an all-empty batch keeps one padding position
        assert got["input_ids"].shape == (len(batch), width)
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(got[key][:, : expected[key].shape[1]], expected[key]), (batch, key)
    blank = processor.tokenize(["", " "])  # the one position of an all-blank batch: padding, not attended
    assert blank["input_ids"].tolist() == [[tokenizer.pad_token_id]] * 2 and not blank["attention_mask"].any()
    # A tokenizer swapped in afterwards is the one that encodes.
    processor.tokenizer = build_tokenizer(["zebra crossing"] * 2, min_frequency=1)
    assert torch.equal(processor.tokenize(["zebra crossing"])["input_ids"],
                       processor.tokenizer(["zebra crossing"], return_tensors="pt")["input_ids"])


def reference_pixels(image, size, mean, std) -> torch.Tensor:
    """The photo transform written out (it must never change): decode at full size, bilinear resize to S x S
    with reducing_gap=2.0, uint8, then (x / 255 - mean) / std in float32."""
    pil = load_image(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (pixels.float() / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_outputs_are_bit_identical_to_the_reference_transform_and_tokenizer(tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    big.save(tmp_path / "big.jpg", quality=90)
    jpeg = io.BytesIO()
    big.save(jpeg, "JPEG")
    images = [tmp_path / "big.jpg", jpeg.getvalue(), Image.new("RGBA", (30, 40), (10, 20, 30, 128)),
              rng.random((33, 47, 3)), rng.integers(0, 255, (64, 64), dtype=np.uint8)]
    captions = ["a dog on the beach", "", "A MAN in a red shirt on the beach with a dog", "zebra!!", "é a\tman"]
    tokenizer = build_tokenizer(["a dog on the beach", "a man in a red shirt"] * 2, min_frequency=1)
    settings = ((32, (0.5, 0.4, 0.3), (0.2, 0.3, 0.25), 32), (224, IMAGENET_MEAN, IMAGENET_STD, 4))
    for size, mean, std, max_length in settings:
        processor = MultiModalProcessor(tokenizer, image_size=size, image_mean=mean, image_std=std,
                                        max_length=max_length)
        expected_pixels = torch.stack([reference_pixels(image, size, mean, std) for image in images])
        expected_tokens = tokenizer(captions, padding="longest", truncation=True, max_length=max_length,
                                    return_tensors="pt")
        both, photos_only, captions_only = (processor(images=images, text=captions), processor(images=images),
                                            processor(text=captions))
        for batch in (both, photos_only):
            assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].is_contiguous()
            assert torch.equal(batch["pixel_values"], expected_pixels)
        for batch in (both, captions_only):
            for key in ("input_ids", "attention_mask"):
                assert torch.equal(batch[key], expected_tokens[key])
        assert set(photos_only) == {"pixel_values"} and set(captions_only) == {"input_ids", "attention_mask"}
        assert torch.equal(processor.normalize(processor.resize_image(images[0])), expected_pixels[0])
        assert processor.resize_image(images[0]).dtype == torch.uint8


def test_save_and_load_round_trip_through_auto_classes(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    expected = processor(images=image, text="a dog")
    # Ours reads a folder's JSON; transformers' own ProcessorMixin loader (what a hub id goes through) reads it too.
    standard = super(MultiModalProcessor, MultiModalProcessor).from_pretrained(str(tmp_path))
    for loaded in (MultiModalProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path), standard):
        assert type(loaded) is MultiModalProcessor
        assert (loaded.image_size, loaded.max_length) == (32, processor.max_length)
        got = loaded(images=image, text="a dog")
        assert all(torch.equal(expected[key], got[key]) for key in expected)
    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(image_processor) is MultiModalImageProcessor
    assert torch.equal(image_processor(image)["pixel_values"], expected["pixel_values"])
    with pytest.raises(MMClassifierError, match="not a saved mm_classifier model"):
        MultiModalProcessor.from_pretrained(tmp_path / "nope")
    with pytest.raises(MMClassifierError, match="no tokenizer"):
        MultiModalProcessor(None).save_pretrained(tmp_path / "photos_only")


def test_a_folder_saved_before_the_processor_was_a_processor_mixin_loads(processor, tmp_path):
    processor.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "processor_class": "MultiModalProcessor", "image_size": 32, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "max_length": 32}))
    loaded = MultiModalProcessor.from_pretrained(tmp_path)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    expected, got = processor(images=image, text="a dog"), loaded(images=image, text="a dog")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
