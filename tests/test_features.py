"""The on-disk photo caches: resized pixels and frozen backbone outputs, reused by a second run."""

import datasets
import numpy as np
import pytest
import torch

from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor, load_flickr8k
from mm_classifier.cache import CACHE_ENV_VAR
from mm_classifier.features import PhotoTable, cached_frozen_features, photo_pixels, photos_key


@pytest.fixture(scope="module")
def photos(tiny_folder):
    return load_flickr8k(str(tiny_folder))["validation"]


def tiny_model(**overrides):
    config = MultiModalConfig(
        modality="image", backbone="test_efficientnet", image_size=32, id2label={0: "dog", 1: "snow"}, **overrides
    )
    model = MultiModalClassifier(config)
    model.freeze_backbone(0)  # the whole backbone frozen: its pooled features are what gets cached
    return model.eval()


def test_pixels_are_cached_and_read_back_unchanged(photos):
    processor = MultiModalProcessor(None, image_size=32)
    first = photo_pixels(photos, processor)
    assert first.shape == (len(photos), 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(photo_pixels(photos, processor).tensor(), first.tensor())
    # The cache key follows the selected photos, not the table underneath a selection.
    assert photos_key(photos.select([0, 1])) != photos_key(photos.select([1, 2]))
    assert photos_key(photos.select([0, 1])) == photos_key(photos.select([0, 1, 2]).select([0, 1]))


def test_photo_table_indexes_rows_across_arrow_chunks_like_a_tensor():
    rows = torch.arange(7 * 2 * 3, dtype=torch.float32).view(7, 2, 3)
    parts = [datasets.Dataset.from_dict({"x": rows[a:b].flatten(1).numpy()}) for a, b in ((0, 3), (3, 4), (4, 7))]
    table = datasets.concatenate_datasets(parts)
    assert table.data.column("x").num_chunks == 3
    photo_table = PhotoTable(table, "x", (2, 3), np.float32)
    assert len(photo_table) == 7 and photo_table.shape == rows.shape and photo_table.dtype == torch.float32
    for index in ([6, 0, 3, 3], torch.tensor([5, 2]), slice(1, 6, 2), slice(None), -1, 4, []):
        assert torch.equal(photo_table[index], rows[index]), index
    assert torch.equal(photo_table.tensor(), rows)
    for bad in (7, -8, [0, 9]):
        with pytest.raises(IndexError):
            photo_table[bad]


def test_cached_frozen_features_never_load_the_pixels_again(photos):
    model = tiny_model()
    processor = MultiModalProcessor.from_config(model.config, None)
    pixels = photo_pixels(photos, processor)
    key = photos_key(photos) + "32"
    calls = []

    def load():
        calls.append(1)
        return pixels

    table = cached_frozen_features(load, key, model, processor, num_photos=len(photos))
    assert isinstance(table, PhotoTable)  # rows read from the memory-mapped cache file, a batch at a time
    built = table.tensor()
    assert calls == [1]  # a cache miss loads the pixels once
    expected = model.image_encoder.backbone_features(processor.normalize(pixels.tensor()))
    torch.testing.assert_close(built.float(), expected, atol=1e-2, rtol=1e-2)  # stored in float16

    def must_not_load():
        raise AssertionError("the pixels were loaded although the outputs are cached")

    assert torch.equal(
        cached_frozen_features(must_not_load, key, model, processor, num_photos=len(photos)).tensor(), built
    )
    # a tensor of pixels finds the same cache
    assert torch.equal(cached_frozen_features(pixels, key, model, processor).tensor(), built)
    # so does a processor that cuts captions elsewhere (max_length comes from the training texts)
    longer = MultiModalProcessor.from_config(model.config, None)
    longer.max_length = processor.max_length + 16
    assert torch.equal(cached_frozen_features(must_not_load, key, model, longer, num_photos=len(photos)).tensor(),
                       built)
    with pytest.raises(TypeError, match="num_photos"):
        cached_frozen_features(load, key, model, processor).tensor()

    # Other backbone weights are another cache entry: the outputs are computed again.
    other = tiny_model()
    with torch.no_grad():
        other.image_encoder.backbone.conv_stem.weight.mul_(2)
    rebuilt = cached_frozen_features(load, key, other, processor, num_photos=len(photos)).tensor()
    assert calls == [1, 1] and not torch.equal(rebuilt, built)
    # Trainable stages train on pixels: only a wholly frozen backbone's features are cached.
    model.freeze_backbone(1)
    with pytest.raises(ValueError, match="wholly frozen backbone"):
        cached_frozen_features(load, key, model, processor, num_photos=len(photos))


def test_mirror_images_outputs_are_cached_apart(photos):
    model = tiny_model()
    processor = MultiModalProcessor.from_config(model.config, None)
    pixels = photo_pixels(photos, processor)
    key = photos_key(photos) + "32-mirror-test"
    plain = cached_frozen_features(pixels, key, model, processor).tensor()
    mirrored = cached_frozen_features(pixels, key, model, processor, mirror=True).tensor()
    expected = model.image_encoder.backbone_features(processor.normalize(pixels.tensor()).flip(-1))
    torch.testing.assert_close(mirrored.float(), expected, atol=1e-2, rtol=1e-2)
    assert not torch.equal(plain, mirrored)

    def must_not_load():
        raise AssertionError("the pixels were loaded although the outputs are cached")

    assert torch.equal(
        cached_frozen_features(must_not_load, key, model, processor, num_photos=len(photos), mirror=True).tensor(),
        mirrored,
    )
    assert torch.equal(
        cached_frozen_features(must_not_load, key, model, processor, num_photos=len(photos)).tensor(), plain
    )


def test_a_cache_file_cut_short_is_rebuilt_never_read(photos, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))  # a cache of its own: each folder holds this test's file only
    processor = MultiModalProcessor(None, image_size=32)
    model = tiny_model()
    pixels = photo_pixels(photos, processor).tensor()  # a copy: the cache file is cut below, under its memory map
    key = photos_key(photos) + "cut"
    features = cached_frozen_features(pixels, key, model, processor).tensor()
    for kind, build, expected in (("pixels", lambda: photo_pixels(photos, processor), pixels),
                                  ("features", lambda: cached_frozen_features(pixels, key, model, processor),
                                   features)):
        newest, = (tmp_path / kind).glob("*.arrow")
        with open(newest, "r+b") as handle:  # as a crash or a full disk would leave it
            handle.truncate(newest.stat().st_size // 2)
        with caplog.at_level("WARNING", logger="mm_classifier.cache"):
            assert torch.equal(build().tensor(), expected), kind
        assert f"Rebuilding the damaged cache file {newest}" in caplog.text
        caplog.clear()
