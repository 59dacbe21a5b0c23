"""The on-disk photo caches: resized pixels and frozen backbone outputs, reused by a second run."""

import pytest
import torch

from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor, load_flickr8k
from mm_classifier.features import photo_pixels, photos_key, stem_outputs


@pytest.fixture(scope="module")
def photos(tiny_folder):
    return load_flickr8k(str(tiny_folder))["validation"]


def tiny_model(**overrides):
    config = MultiModalConfig(
        modality="image", backbone="test_efficientnet", image_size=32, id2label={0: "dog", 1: "snow"}, **overrides
    )
    return MultiModalClassifier(config).eval()


def test_pixels_are_cached_and_read_back_unchanged(photos):
    processor = MultiModalProcessor(None, image_size=32)
    first = photo_pixels(photos, processor)
    assert first.shape == (len(photos), 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(photo_pixels(photos, processor), first)


def test_cached_backbone_outputs_never_load_the_pixels_again(photos):
    model = tiny_model()
    processor = MultiModalProcessor.from_config(model.config, None)
    pixels = photo_pixels(photos, processor)
    key = photos_key(photos) + "32"
    calls = []

    def load():
        calls.append(1)
        return pixels

    built = stem_outputs(load, key, model, processor, 0, num_photos=len(photos))
    assert calls == [1]  # a cache miss loads the pixels once
    expected = model.image_encoder.stem(processor.normalize(pixels), 0)
    torch.testing.assert_close(built.float(), expected, atol=1e-2, rtol=1e-2)  # stored in float16

    def must_not_load():
        raise AssertionError("the pixels were loaded although the outputs are cached")

    assert torch.equal(stem_outputs(must_not_load, key, model, processor, 0, num_photos=len(photos)), built)
    assert torch.equal(stem_outputs(pixels, key, model, processor, 0), built)  # a tensor finds the same cache
    with pytest.raises(TypeError, match="num_photos"):
        stem_outputs(load, key, model, processor, 0)

    # Other backbone weights are another cache entry: the outputs are computed again.
    other = tiny_model()
    with torch.no_grad():
        other.image_encoder.backbone.conv_stem.weight.mul_(2)
    rebuilt = stem_outputs(load, key, other, processor, 0, num_photos=len(photos))
    assert calls == [1, 1] and not torch.equal(rebuilt, built)
