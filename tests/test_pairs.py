import datasets
import pytest
import torch

from mm_classifier import CONCEPT_LEXICON, MultiModalProcessor, build_tokenizer
from mm_classifier.pairs import (
    PairCollator,
    PairTable,
    PhotoInput,
    SplitInputs,
    hold_out_validation,
    load_training_data,
    multi_hot,
    photo_rows,
)


def test_multi_hot_marks_each_rows_concepts():
    assert multi_hot([[0, 2], [], [1]], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_withheld_test_photos_make_validation_the_test_split_and_hold_out_training_photos_by_photo():
    names = [f"p{i}" for i in range(14)]
    photos = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image_id": names}),
        "validation": datasets.Dataset.from_dict({"image_id": ["d0", "d1"]}),
        "test": datasets.Dataset.from_dict({"image_id": []}),
    })
    pairs = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"image_id": [i for i in split["image_id"] for _ in range(5)]})
        for name, split in photos.items()
    })
    new_photos, new_pairs = hold_out_validation(photos, pairs, seed=0)
    assert len(new_photos["validation"]) == 2 and len(new_photos["train"]) == 12
    assert new_photos["test"]["image_id"] == ["d0", "d1"]
    for split in ("train", "validation", "test"):
        assert set(new_pairs[split]["image_id"]) == set(new_photos[split]["image_id"])
        assert len(new_pairs[split]) == 5 * len(new_photos[split])
    assert not set(new_photos["train"]["image_id"]) & set(new_photos["validation"]["image_id"])


def test_photo_rows_average_each_photos_pair_labels():
    tokens = torch.ones(5, 4, dtype=torch.long)
    labels = torch.tensor([[1.0, 0], [0, 0], [1, 1], [1, 0], [1, 1]])
    pairs = PairTable(torch.tensor([0, 0, 2, 2, 2]), tokens, tokens, labels)
    rows = photo_rows(pairs, num_photos=3)  # photo 1 has no pair: no row
    assert rows.photo_index.tolist() == [0, 2]
    torch.testing.assert_close(rows.labels, torch.tensor([[0.5, 0.0], [1.0, 2 / 3]]))
    assert rows.attention_mask.sum() == 0  # no caption


def load(tiny_folder, split_seed):
    return load_training_data(str(tiny_folder), split_seed=split_seed, lexicon=CONCEPT_LEXICON, num_concepts=20,
                              min_votes=2)


def test_training_data_is_split_by_photo_and_the_split_seed_decides_the_split(tiny_folder):
    data = load(tiny_folder, split_seed=0)
    ids = {split: set(part.photos["image_id"]) for split, part in data.splits.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    train = data.splits["train"]
    assert len(train.pairs) == 5 * len(train.photos)  # five captions a photo, one pair each
    assert int(train.pairs.photo_index.max()) == len(train.photos) - 1
    assert train.pairs.labels.shape[1] == len(data.concepts) and data.report_split == "test"
    again, other = load(tiny_folder, split_seed=0), load(tiny_folder, split_seed=1)
    assert set(again.splits["test"].photos["image_id"]) == ids["test"]
    assert set(other.splits["test"].photos["image_id"]) != ids["test"]


def collator(photo_input, photos, mirrored=None, text_embeds=None, uses_text=True):
    tokenizer = build_tokenizer(["a dog runs", "a child in the snow"], min_frequency=1)
    processor = MultiModalProcessor(tokenizer, image_size=8)
    return PairCollator(processor, SplitInputs(photo_input, photos, mirrored, text_embeds), True, uses_text)


def batch(rows=4):
    ids = torch.tensor([[3, 4, 0, 0, 0]] * rows)
    return {"row": torch.arange(rows), "photo_index": torch.arange(rows) % 2, "input_ids": ids,
            "attention_mask": (ids > 0).long(), "labels": torch.zeros(rows, 2)}


def test_pixels_are_normalised_and_flipped_at_random_in_training_only():
    pixels = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    collate = collator(PhotoInput.PIXELS, pixels)
    evaluation = collate(batch(), training=False)
    expected = collate.processor.normalize(pixels[torch.tensor([0, 1, 0, 1])])
    torch.testing.assert_close(evaluation["pixel_values"], expected)
    assert evaluation["input_ids"].shape == (4, 2)  # the padding all captions share is trimmed
    torch.manual_seed(0)
    training = collate(batch(64), training=True)["pixel_values"]
    plain = collate.processor.normalize(pixels[batch(64)["photo_index"]])
    flipped = [not torch.equal(t, p) for t, p in zip(training, plain, strict=True)]
    assert 10 < sum(flipped) < 54
    assert all(torch.equal(t, p.flip(-1)) for t, p, f in zip(training, plain, flipped, strict=True) if f)


def test_mirrored_cached_features_give_either_view_in_training_and_both_in_evaluation():
    plain, mirrored = torch.zeros(2, 5), torch.ones(2, 5)
    collate = collator(PhotoInput.FROZEN_FEATURES, plain, mirrored, text_embeds=torch.randn(64, 3))
    evaluation = collate(batch(), training=False)
    assert torch.equal(evaluation["frozen_features"], torch.zeros(4, 5))
    assert torch.equal(evaluation["mirrored_frozen_features"], torch.ones(4, 5))
    assert torch.equal(evaluation["text_embeds"], collate.inputs.text_embeds[:4])  # a frozen text encoder's, by row
    torch.manual_seed(0)
    training = collate(batch(64), training=True)
    assert "mirrored_frozen_features" not in training
    views = training["frozen_features"][:, 0]
    assert set(views.tolist()) == {0.0, 1.0} and (views == training["frozen_features"].T).all()


@pytest.mark.parametrize("kind", [PhotoInput.IMAGE_EMBEDS, PhotoInput.FROZEN_FEATURES])
def test_cached_photo_rows_feed_the_model_input_of_their_kind(kind):
    table = torch.arange(6.0).view(2, 3)
    inputs = collator(kind, table, uses_text=False)(batch(), training=True)
    assert set(inputs) == {"labels", kind.value}
    assert torch.equal(inputs[kind.value], table[torch.tensor([0, 1, 0, 1])])
