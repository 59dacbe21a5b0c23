"""(photo, caption) pair tables for training, multi-hot targets, and the collator that turns rows into model inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .data import SINGLE_LABEL, DataSource, arrow_batches, load_photos, problem_type_of, single_label_pairs, to_pairs
from .errors import MMClassifierError
from .labels import load_label_file
from .photo_rows import counting_skipped
from .processing import MultiModalProcessor
from .sample import BUILT_IN
from .text_models import choose_text_encoder, fit_max_length, max_length_limit

SPLITS = ("train", "validation", "test")


def multi_hot(label_lists, num_concepts: int) -> np.ndarray:
    """Concept-index lists (a pair column ``labels``) -> (N, C) 0/1 int8 targets."""
    targets = np.zeros((len(label_lists), num_concepts), dtype=np.int8)
    for row, labels in enumerate(label_lists):
        targets[row, labels] = 1
    return targets


class PairTable(torch.utils.data.Dataset):
    """Training or evaluation rows as tensors: which photo (its row in the split), caption tokens, labels.

    Args:
        photo_index: (N,) the row of each pair's photo in its split's photo table.
        input_ids, attention_mask: (N, T) caption tokens (int32 ids and a uint8 mask from :func:`pair_tables`).
        labels: (N, C) float targets (0/1, or a photo's mean over its pairs, see :func:`photo_rows`).
    """

    def __init__(self, photo_index, input_ids, attention_mask, labels):
        self.photo_index, self.input_ids, self.attention_mask = photo_index, input_ids, attention_mask
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {
            "row": i,  # for tables computed once per pair (a frozen text encoder's caption embeddings)
            "photo_index": self.photo_index[i],
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


@dataclass
class Split:
    """One split of the data: its photo rows (``datasets``) and its pairs as tensors."""

    photos: datasets.Dataset
    pairs: PairTable


def pair_tables(
    photos: datasets.DatasetDict, pairs: datasets.DatasetDict, processor: MultiModalProcessor
) -> dict[str, Split]:
    """Photo rows and labelled pair rows (from ``data.to_pairs``) -> a :class:`Split` per split."""
    num_concepts = len(pairs["train"].features["labels"].feature.names)
    return {split: Split(photos[split], _pair_table(photos[split], pairs[split], processor, num_concepts))
            for split in SPLITS}


def _pair_table(photos: datasets.Dataset, pairs: datasets.Dataset, processor: MultiModalProcessor, num_concepts: int,
                batch_size: int = 8192) -> PairTable:
    """One split's pairs as tensors, read and tokenised a batch at a time into tensors allocated once: the split's
    captions and labels are never Python lists of the whole split."""
    photo_ids = pa.concat_arrays([b["image_id"].combine_chunks() for b in arrow_batches(photos, ["image_id"])]
                                 or [pa.array([], pa.string())])
    width = processor.max_length  # trimmed below to the longest caption of the split, as one call would pad
    photo_index = torch.zeros(len(pairs), dtype=torch.long)
    # int32 ids and a uint8 mask: the model reads them as it reads int64, at 5/16 of the memory (COCO: 590k pairs).
    input_ids = torch.full((len(pairs), width), processor.tokenizer.pad_token_id or 0, dtype=torch.int32)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.uint8)
    labels = torch.zeros((len(pairs), num_concepts))
    longest, start = 1, 0
    for batch in arrow_batches(pairs, ["image_id", "caption", "labels"], batch_size):
        rows = slice(start, start + len(batch))
        photo_index[rows] = torch.as_tensor(pc.index_in(batch["image_id"], value_set=photo_ids).to_numpy().copy())
        encoded = processor.tokenize(batch["caption"].to_pylist())  # (B, T)
        length = encoded["input_ids"].shape[1]
        input_ids[rows, :length], attention_mask[rows, :length] = encoded["input_ids"], encoded["attention_mask"]
        label_lists = batch["labels"].combine_chunks()
        labels[rows] = torch.from_numpy(multi_hot_arrow(label_lists, num_concepts)).float()
        longest, start = max(longest, length), start + len(batch)
    if longest < width:
        input_ids, attention_mask = input_ids[:, :longest].clone(), attention_mask[:, :longest].clone()
    return PairTable(photo_index, input_ids, attention_mask, labels)


def multi_hot_arrow(label_lists: pa.ListArray, num_concepts: int) -> np.ndarray:
    """:func:`multi_hot` of an Arrow list column, without a Python list per row."""
    targets = np.zeros((len(label_lists), num_concepts), dtype=np.int8)
    rows = pc.list_parent_indices(label_lists).to_numpy()
    targets[rows, pc.list_flatten(label_lists).to_numpy()] = 1
    return targets


def hold_out_validation(
    photos: datasets.DatasetDict, pairs: datasets.DatasetDict, seed: int, fraction: float = 1 / 7
) -> tuple[datasets.DatasetDict, datasets.DatasetDict]:
    """For copies whose test photos are withheld: the validation split becomes the test split, and a seeded
    ``fraction`` of the training photos the validation split (still split by photo)."""
    names = sorted(photos["train"]["image_id"])
    held_out = set(np.random.default_rng(seed).permutation(names)[: max(1, round(fraction * len(names)))].tolist())

    def resplit(table: datasets.DatasetDict) -> datasets.DatasetDict:
        in_held_out = [i in held_out for i in table["train"]["image_id"]]
        return datasets.DatasetDict({
            "train": table["train"].select([r for r, h in enumerate(in_held_out) if not h]),
            "validation": table["train"].select([r for r, h in enumerate(in_held_out) if h]),
            "test": table["validation"],
        })

    return resplit(photos), resplit(pairs)


def without_photos(pairs: PairTable, photos: list[int]) -> PairTable:
    """The pair rows whose photo is not among ``photos`` (rows of the split's photo table)."""
    if not photos:
        return pairs
    keep = ~torch.isin(pairs.photo_index, torch.as_tensor(photos, dtype=pairs.photo_index.dtype))
    return PairTable(pairs.photo_index[keep], pairs.input_ids[keep], pairs.attention_mask[keep], pairs.labels[keep])


def photo_rows(pairs: PairTable, num_photos: int) -> PairTable:
    """One row per photo with the mean of its pairs' labels, and no caption.

    An image-only model gives all pairs of a photo the same logits, and BCE is linear in the target, so
    training on (photo, mean label) is the same objective as training on its pairs, at a fraction of the cost.
    """
    counts = torch.zeros(num_photos).index_add_(0, pairs.photo_index, torch.ones(len(pairs)))
    keep = counts > 0
    sums = torch.zeros(num_photos, pairs.labels.shape[1]).index_add_(0, pairs.photo_index, pairs.labels)
    index = torch.arange(num_photos)[keep]
    empty = torch.zeros(len(index), pairs.input_ids.shape[1], dtype=torch.long)
    return PairTable(index, empty, empty, sums[keep] / counts[keep, None])


class PhotoInput(enum.Enum):
    """What a split's photo table holds, one row per photo, and so which model input it feeds."""

    PIXELS = "pixel_values"  # resized uint8 pixels: the backbone runs (partly) trainable on them
    FROZEN_FEATURES = "frozen_features"  # cached output of the backbone's frozen part
    IMAGE_EMBEDS = "image_embeds"  # a frozen image encoder's embeddings, computed once per photo


@dataclass
class SplitInputs:
    """What a split's batches read besides the pair rows, computed once per stage.

    Attributes:
        photos: one row per photo, of the kind ``photo_input`` names (a tensor or a ``features.PhotoTable``).
        mirrored: the same for the photos' mirror images (cached frozen features with mirror averaging).
        text_embeds: (N, Dt) a frozen text encoder's embedding of each pair's caption.
        caption_features: (N, hidden) a frozen transformers encoder's caption vectors, which the text encoder's
            trainable projection reads.
        pairs: the split's pair rows the stage uses: those of photos that still decode.
        unreadable_photos: rows of photos that no longer decode (:func:`~mm_classifier.features.photo_pixels`):
            their pairs are left out of ``pairs`` (:func:`without_photos`).
    """

    photo_input: PhotoInput | None = None
    photos: object | None = None
    mirrored: object | None = None
    text_embeds: torch.Tensor | None = None
    caption_features: torch.Tensor | None = None
    pairs: PairTable | None = None
    unreadable_photos: list[int] = dataclasses.field(default_factory=list)


class PairCollator:
    """Batch of :class:`PairTable` rows (already on the device) -> the model's keyword arguments.

    It runs inside the training loop, after the loop seeds the step's random draws (view choice, flips), so a
    resumed run makes the same draws as an uninterrupted one; a DataLoader ``collate_fn`` would draw them
    before that seeding.
    """

    def __init__(self, processor: MultiModalProcessor, inputs: SplitInputs, uses_image: bool, uses_text: bool):
        self.processor, self.inputs, self.uses_image, self.uses_text = processor, inputs, uses_image, uses_text

    def __call__(self, batch: dict, training: bool) -> dict:
        model_inputs = {"labels": batch["labels"]}
        if self.uses_image:
            model_inputs.update(self._photos(batch["photo_index"].cpu(), batch["labels"].device, training))
        if self.uses_text:
            model_inputs.update(self._captions(batch))
        return model_inputs

    def _captions(self, batch: dict) -> dict:
        for name in ("text_embeds", "caption_features"):  # tables computed once per caption
            table = getattr(self.inputs, name)
            if table is not None:
                return {name: table[batch["row"].cpu()].to(batch["labels"].device)}
        length = max(1, int(batch["attention_mask"].sum(1).max()))  # trim the padding the batch shares
        return {"input_ids": batch["input_ids"][:, :length], "attention_mask": batch["attention_mask"][:, :length]}

    def _photos(self, index: torch.Tensor, device, training: bool) -> dict:
        kind, photos = self.inputs.photo_input, self.inputs.photos[index].to(device)
        mirrored = self.inputs.mirrored[index].to(device) if self.inputs.mirrored is not None else None
        if kind is PhotoInput.PIXELS:
            pixels = self.processor.normalize(photos)  # (B, 3, S, S)
            if training:  # horizontal flips: no concept depends on left and right
                flip = torch.rand(len(pixels), device=pixels.device) < 0.5
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            return {"pixel_values": pixels.contiguous(memory_format=torch.channels_last)}
        if mirrored is not None and not training:  # the model averages the two views' embeddings
            return {"frozen_features": photos.float(), "mirrored_frozen_features": mirrored.float()}
        if mirrored is not None:  # training: either view at random
            pick = torch.rand(len(index)) < 0.5
            photos = torch.where(pick.view(-1, *[1] * (photos.dim() - 1)).to(photos.device), mirrored, photos)
        return {kind.value: photos.float()}


@dataclass
class TrainingData:
    """Everything the stages of a training run share: the splits, the concepts and the tokenizer.

    ``report_split`` names, as ``data.load_photos`` calls it, the split that the run's test split is:
    ``"validation"`` when the source withholds its test photos (see :func:`hold_out_validation`).
    """

    splits: dict[str, Split]
    concepts: list[str]
    tokenizer: object
    lexicon: dict | None  # None for given labels
    text_encoder: str  # lstm, bag, or a transformers encoder's hub id or folder (never auto)
    max_length: int  # tokens a caption keeps (the pair tables are cut there)
    problem_type: str  # multi_label_classification or single_label_classification (transformers' names)
    report_split: str = "test"
    held_out_photos: int = 0
    skipped_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # loading skipped these, by kind


def load_training_data(
    dataset: str | DataSource, *, split_seed: int, lexicon: dict, num_concepts: int, min_votes: int,
    max_train_samples: int | None = None, main_process_first=contextlib.nullcontext, labels_file=None,
    text_encoder: str = "auto", max_length: int | None = None, problem_type: str | None = None,
) -> TrainingData:
    """Load a data set, label its pairs (given labels, or concepts mined leave-one-out), build the tokenizer on the
    training captions (or load a pretrained encoder's) and choose how many tokens a caption keeps.

    Args:
        dataset: a data set name or path, or a :class:`~mm_classifier.data.DataSource` with the options to read it.
        labels_file: for a data set with given labels, a file naming the label set (default: the training labels).
        text_encoder: ``"lstm"``, ``"bag"``, ``"auto"`` (the lstm for short captions, the bag for longer texts:
            :func:`~mm_classifier.text_models.choose_text_encoder`) or a transformers encoder's hub id or folder
            (its tokenizer is used).
        max_length: tokens a caption keeps; default: :func:`~mm_classifier.text_models.fit_max_length` of the
            training captions.
        problem_type: ``"single_label_classification"`` or ``"multi_label_classification"``; default: detected
            (:func:`~mm_classifier.data.problem_type_of`). Single-label keeps the pairs whose photo has a class.
        main_process_first: a context manager (Accelerate's ``main_process_first``) around the cached
            ``datasets`` work, so that other processes reuse the main process's cache files.
    """
    with main_process_first():
        with counting_skipped() as skipped:
            photos = load_photos(dataset, seed=split_seed)
        if max_train_samples:
            photos["train"] = photos["train"].select(range(min(max_train_samples, len(photos["train"]))))
        given = "labels" in photos["train"].column_names
        if labels_file is not None and not given:
            raise MMClassifierError(f"--labels {labels_file} names the label set of given labels, but {dataset} has "
                                    "no labels column (name it with --label-column).")
        concepts = load_label_file(labels_file) if labels_file is not None else None
        problem_type = problem_type_of(photos, problem_type)
        pairs = to_pairs(photos, concepts, min_votes=min_votes, num_concepts=num_concepts, lexicon=lexicon)
        if problem_type == SINGLE_LABEL:
            pairs = single_label_pairs(pairs)
    report_split, held_out = "test", 0
    if len(photos["test"]) == 0 and len(photos["validation"]) > 0:
        photos, pairs = hold_out_validation(photos, pairs, split_seed)
        report_split, held_out = "validation", len(photos["validation"])
    for split in SPLITS:
        if len(photos[split]) == 0:
            raise MMClassifierError(f"The {split} split of {dataset} is empty; it needs photos to train and evaluate.")
    # The sample's vocabulary is tiny and complete; on real captions, words seen once are mostly noise.
    captions = [text for batch in arrow_batches(pairs["train"], ["caption"]) for text in batch["caption"].to_pylist()]
    text_encoder, tokenizer = choose_text_encoder(text_encoder, captions,
                                                  min_frequency=1 if str(dataset) in BUILT_IN else 2)
    if max_length and max_length > max_length_limit(tokenizer):
        raise MMClassifierError(f"--max-length {max_length} is more than the text encoder reads: at most "
                                f"{max_length_limit(tokenizer)} tokens.")
    max_length = max_length or fit_max_length(tokenizer, captions)
    return TrainingData(
        splits=pair_tables(photos, pairs, MultiModalProcessor(tokenizer, max_length=max_length)),
        concepts=pairs["train"].features["labels"].feature.names,
        # Given labels are no lexicon's concepts: the model config then records no concept words.
        tokenizer=tokenizer, lexicon=None if given else lexicon, text_encoder=text_encoder, max_length=max_length,
        problem_type=problem_type, report_split=report_split,
        held_out_photos=held_out, skipped_rows=dict(skipped),
    )
