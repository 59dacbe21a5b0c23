"""Train mm_classifier with Accelerate: an image-only, a text-only and a fusion model, or one of them.

    python train.py                                  # built-in sample -> outputs/{image,text,fusion}, report.md
    accelerate launch train.py --dataset DIR ...     # any number of CPU processes or GPUs
    python train.py --help                           # every option
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from mm_classifier import (
    CONCEPT_LEXICON,
    MMClassifierError,
    MultiModalClassifier,
    MultiModalConfig,
    MultiModalProcessor,
    build_tokenizer,
    load_concept_file,
    load_flickr8k,
    to_pairs,
)
from mm_classifier.data import check_source
from mm_classifier.evaluation import (
    compute_metrics, multi_hot, select_threshold_shrinkage, tune_thresholds, write_model_card,
    write_pipeline_report,
)
from mm_classifier.features import photo_pixels, photos_key, stem_outputs
from mm_classifier.plots import plot_learning_curves

STAGES = ("image", "text", "fusion")
SAMPLE_BACKBONE = "test_efficientnet"
SAMPLE_EPOCHS = {"image": 40, "text": 8, "fusion": 8}


# --------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="sample", help="folder (Kaggle or original layout), hub id, or 'sample'")
    data.add_argument("--concepts", type=Path, help="JSON concept file (concept -> list of words); default: built-in")
    data.add_argument("--num-concepts", type=int, default=20, help="how many of the most frequent concepts to use")
    data.add_argument("--min-votes", type=int, default=2, help="captions (of the other four) that must name a concept")
    data.add_argument("--seed", type=int, default=0,
                      help="seeds training, and the split (when the data has no lists) unless --split-seed is given")
    data.add_argument("--split-seed", type=int,
                      help="seeds only the split (default: --seed): vary --seed alone to retrain on the same split")

    model = p.add_argument_group("model")
    model.add_argument("--modality", choices=STAGES, help="train only this model, into --output-dir (default: all three)")
    model.add_argument("--backbone", help="timm model name (default: mobilenetv2_100; the sample: test_efficientnet)")
    model.add_argument("--backbone-pad-type", default=None, help="timm pad_type, e.g. 'same' for TensorFlow weights")
    model.add_argument("--image-feature-blocks", type=int, nargs="+", metavar="STAGE",
                       help="photo features: pooled outputs of these backbone stages (e.g. 5 6), concatenated, "
                            "instead of the pooled head output (default)")
    model.add_argument("--image-local-projection", action="store_true",
                       help="project the photo's feature map at every position, then average (default: project "
                            "the averaged features); the feature cache then holds maps")
    model.add_argument("--image-size", type=int, help="input side in pixels (default: 64 for the sample, else 224)")
    model.add_argument("--image-mean", type=float, nargs=3, help="normalisation mean (default: ImageNet's)")
    model.add_argument("--image-std", type=float, nargs=3, help="normalisation std (default: ImageNet's)")
    model.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                       help="start from pretrained backbone weights (default: on for real data, off for the sample)")
    model.add_argument("--backbone-weights", type=Path, help="local safetensors backbone weights (implies --pretrained)")
    model.add_argument("--trainable-blocks", type=int, default=None,
                       help="backbone stages to train; 0 = frozen (default: 0 for trained weights, all from scratch)")
    model.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=True,
                       help="compute the frozen backbone part once and train on its cached outputs (default: on)")
    model.add_argument("--mirror-photos", action=argparse.BooleanOptionalAction, default=True,
                       help="use each photo's mirror image too: on cached features training draws either view, and "
                            "evaluation and prediction average the two views' image embeddings (default: on)")
    model.add_argument("--modality-dropout", type=float, default=0.25, help="fusion: chance to hide photo or caption")
    model.add_argument("--fusion-encoders", choices=["frozen", "trainable"], default="frozen",
                       help="fusion: keep the encoders of the image and text models fixed and train only the fusion "
                            "layers (default), or fine-tune them too")
    model.add_argument("--dropout", type=float, default=0.3)
    model.add_argument("--word-dropout", type=float, default=0.0,
                       help="chance to hide each caption word behind [UNK] while a text encoder trains "
                            "(default: 0, off; the README's Results show what 0.15 did on real Flickr8k)")
    model.add_argument("--fusion-dropout", type=float, help="dropout of the fusion stage (default: --dropout)")
    model.add_argument("--soft-targets", action="store_true",
                       help="fit each pair's share of the photo's other captions that name a concept (0, 1/4, ... 1) "
                            "instead of its 0/1 label; metrics and thresholds still use the labels (default: off)")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int,
                       help="maximum epochs per model (default: 15; the sample: 40 image, 8 text, 8 fusion)")
    train.add_argument("--batch-size", type=int, default=64, help="per process")
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--early-stopping-patience", type=int, default=5, help="epochs without validation mAP gain")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--max-train-samples", type=int, help="use only this many training photos (quick runs)")

    run = p.add_argument_group("runtime")
    run.add_argument("--output-dir", type=Path, default=Path("outputs"))
    run.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    run.add_argument("--checkpointing-steps", type=int, help="save the full training state every N optimizer steps")
    run.add_argument("--resume-from-checkpoint", help="'latest' or a checkpoint folder")
    run.add_argument("--report-to", choices=["none", "tensorboard"], default="none")
    run.add_argument("--push-to-hub", action="store_true", help="upload each trained model (needs internet, a token)")
    run.add_argument("--hub-model-id", help="hub repo for --push-to-hub (a -image/-text suffix per stage)")
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    run.add_argument("--preprocessing-num-proc", type=int, default=min(2, os.cpu_count() or 1))
    run.add_argument("--skip-report", action="store_true", help="do not write outputs/report.md")
    run.add_argument("--kill-after-checkpoint", type=int, help=argparse.SUPPRESS)
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on the data: the sample is tiny and has no pretrained weights to use."""
    sample = args.dataset == "sample"
    check_source(args.dataset)  # before the pretrained-weights check, whose message would hide this one
    if args.backbone_weights is not None:
        if args.pretrained is False:
            raise MMClassifierError("--backbone-weights and --no-pretrained contradict each other.")
        args.pretrained = True
    if args.pretrained is None:
        args.pretrained = not sample
    if args.split_seed is None:
        args.split_seed = args.seed
    for name in ("epochs", "image_size"):  # given but not positive (0 must not read as "use the default")
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise MMClassifierError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    args.image_size = args.image_size or (64 if sample else 224)
    # MobileNetV2 learns too slowly from scratch on a CPU for the sample's five-minute budget (README,
    # "The built-in sample"); timm's tiny EfficientNet learns the sample's scenes in about a minute.
    args.backbone = args.backbone or (SAMPLE_BACKBONE if sample and not args.pretrained else "mobilenetv2_100")
    args.stage_epochs = {stage: args.epochs or (SAMPLE_EPOCHS[stage] if sample else 15) for stage in STAGES}
    args.epochs = args.epochs or max(args.stage_epochs.values())
    for name in ("epochs", "batch_size", "gradient_accumulation_steps", "num_concepts", "min_votes", "image_size"):
        if getattr(args, name) < 1:
            raise MMClassifierError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    # The config checks these too, but only when the first model is built, after the data has loaded.
    probability = (lambda p: 0 <= p < 1, "[0, 1)")
    for name, (valid, shown) in (("dropout", probability), ("fusion_dropout", probability), ("word_dropout", probability),
                                 ("modality_dropout", (lambda p: 0 <= p <= 0.5, "[0, 0.5]"))):
        value = getattr(args, name)
        if value is not None and not valid(value):
            raise MMClassifierError(f"--{name.replace('_', '-')} must be in {shown}, got {value}.")
    if args.trainable_blocks is not None and args.trainable_blocks < 0:
        raise MMClassifierError(f"--trainable-blocks must be 0 or more, got {args.trainable_blocks}.")
    if args.backbone_weights is not None and not args.backbone_weights.is_file():
        raise MMClassifierError(f"--backbone-weights {args.backbone_weights} does not exist.")
    if args.pretrained and args.backbone_weights is None:
        check_pretrained_download()
    if args.push_to_hub:
        check_hub_access(args)
    return args


def check_pretrained_download() -> None:
    """--pretrained without --backbone-weights downloads timm's weights: fail now, not after loading data."""
    import socket

    import huggingface_hub

    reason = None
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            reason = "the hub cannot be reached"
    if reason:
        raise MMClassifierError(
            f"--pretrained downloads the backbone's weights, but {reason}. Pass a local file with "
            "--backbone-weights PATH (safetensors), or train from scratch with --no-pretrained."
        )


def check_hub_access(args) -> None:
    """Fail before training, not after it, when --push-to-hub cannot work."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise MMClassifierError("--push-to-hub needs internet, but HF_HUB_OFFLINE is set.")
    if not args.hub_model_id:
        raise MMClassifierError("--push-to-hub needs --hub-model-id USER/NAME.")
    try:
        huggingface_hub.whoami()
    except Exception as err:
        raise MMClassifierError(f"--push-to-hub: cannot reach the hub or not logged in ({err}).") from err


# --------------------------------------------------------------------------------------------- data


class Rows(torch.utils.data.Dataset):
    """Training or evaluation rows as tensors: which photo, which caption tokens, which labels.

    ``labels`` (0/1) are what the metrics score; ``targets`` are what the loss fits: the labels, or with
    ``--soft-targets`` the share of the photo's other captions that name each concept.
    """

    def __init__(self, photo_index, input_ids, attention_mask, labels, targets=None):
        self.photo_index, self.input_ids, self.attention_mask, self.labels = photo_index, input_ids, attention_mask, labels
        self.targets = labels if targets is None else targets

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {
            "row": i,  # which row: for tables computed once per row (a frozen text encoder's embeddings)
            "photo_index": self.photo_index[i],
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
            "targets": self.targets[i],
        }


def prepare_data(args, accelerator):
    """Photos, leave-one-out pairs, concepts and tokenizer: shared by all stages."""
    lexicon = load_concept_file(args.concepts) if args.concepts else CONCEPT_LEXICON
    with accelerator.main_process_first():
        photos = load_flickr8k(args.dataset, seed=args.split_seed)
        if args.max_train_samples:
            photos["train"] = photos["train"].select(range(min(args.max_train_samples, len(photos["train"]))))
        pairs = to_pairs(photos, min_votes=args.min_votes, num_concepts=args.num_concepts, lexicon=lexicon)
    # The split that outputs/report.md evaluates, by its name in load_flickr8k.
    report_split = "test"
    if len(photos["test"]) == 0 and len(photos["validation"]) > 0:
        photos, pairs = hold_out_validation(photos, pairs, args.split_seed, accelerator)
        report_split = "validation"
    concepts = pairs["train"].features["labels"].feature.names
    for split in ("train", "validation", "test"):
        if len(photos[split]) == 0:
            raise MMClassifierError(f"The {split} split of {args.dataset} is empty; it needs photos to train and evaluate.")
    tokenizer = build_tokenizer(list(pairs["train"]["caption"]), min_frequency=1 if args.dataset == "sample" else 2)
    text_processor = MultiModalProcessor(tokenizer)
    splits = {}
    for split in ("train", "validation", "test"):
        photo_position = {name: i for i, name in enumerate(list(photos[split]["image_id"]))}
        columns = ["image_id", "caption", "labels", *(["label_shares"] if args.soft_targets else [])]
        table = pairs[split].select_columns(columns).to_dict()
        encoded = text_processor.tokenize(table["caption"])  # (N, T), T = longest caption of the split
        labels = torch.from_numpy(multi_hot(table["labels"], len(concepts))).float()
        targets = torch.tensor(table["label_shares"], dtype=torch.float) if args.soft_targets else None
        splits[split] = {
            "photos": photos[split],
            "pairs": Rows(
                torch.tensor([photo_position[i] for i in table["image_id"]]),
                encoded["input_ids"],
                encoded["attention_mask"],
                labels,
                targets,
            ),
            "captions": table["caption"],
        }
    return {
        "splits": splits, "concepts": concepts, "tokenizer": tokenizer, "lexicon": lexicon, "report_split": report_split,
    }


def hold_out_validation(photos, pairs, seed: int, accelerator, fraction: float = 1 / 7):
    """When the test photos are withheld (as in copies that ship only train + dev), the dev split becomes the
    test split and a seeded 1/7 of the training photos becomes the validation split (still split by photo)."""
    import datasets

    names = sorted(photos["train"]["image_id"])
    held_out = set(np.random.default_rng(seed).permutation(names)[: max(1, round(fraction * len(names)))].tolist())
    accelerator.print(
        f"The test split is empty (withheld): the official validation split ({len(photos['validation'])} photos) "
        f"serves as the test split, and {len(held_out)} training photos as the validation split."
    )
    def resplit(table: datasets.DatasetDict) -> datasets.DatasetDict:
        in_held_out = [i in held_out for i in table["train"]["image_id"]]
        return datasets.DatasetDict({
            "train": table["train"].select([r for r, h in enumerate(in_held_out) if not h]),
            "validation": table["train"].select([r for r, h in enumerate(in_held_out) if h]),
            "test": table["validation"],
        })

    return resplit(photos), resplit(pairs)


def photo_rows(pairs: Rows, num_photos: int) -> Rows:
    """One row per photo with the mean of its pairs' labels and targets.

    An image-only model gives all five pairs of a photo the same logits, and BCE is linear in the target, so
    training on (photo, mean target) is the same objective as training on its five pairs, at a fifth of the cost.
    """
    counts = torch.zeros(num_photos).index_add_(0, pairs.photo_index, torch.ones(len(pairs)))
    keep = counts > 0

    def mean(values):
        sums = torch.zeros(num_photos, values.shape[1]).index_add_(0, pairs.photo_index, values)
        return sums[keep] / counts[keep, None]

    index = torch.arange(num_photos)[keep]
    empty = torch.zeros(len(index), pairs.input_ids.shape[1], dtype=torch.long)
    return Rows(index, empty, empty, mean(pairs.labels), mean(pairs.targets))


# --------------------------------------------------------------------------------------------- model


def build_model(stage, args, data, previous) -> MultiModalClassifier:
    backbone_kwargs = {"pad_type": args.backbone_pad_type} if args.backbone_pad_type else {}
    config = MultiModalConfig(
        modality=stage,
        backbone=args.backbone,
        backbone_kwargs=backbone_kwargs,
        image_size=args.image_size,
        image_feature_blocks=args.image_feature_blocks,
        image_local_projection=args.image_local_projection,
        image_mirror_average=args.mirror_photos,
        image_mean=args.image_mean or (0.485, 0.456, 0.406),
        image_std=args.image_std or (0.229, 0.224, 0.225),
        vocab_size=len(data["tokenizer"]),
        pad_token_id=data["tokenizer"].pad_token_id,
        dropout=args.fusion_dropout if stage == "fusion" and args.fusion_dropout is not None else args.dropout,
        modality_dropout=args.modality_dropout if stage == "fusion" else 0.0,
        id2label=dict(enumerate(data["concepts"])),
        concept_words={c: list(data["lexicon"].get(c, [c])) for c in data["concepts"]},
        min_votes=args.min_votes,
    )
    model = MultiModalClassifier(config)
    # The fusion model's encoders start from the single-modality models trained before it.
    if stage == "fusion" and "image" in previous:
        model.image_encoder.load_state_dict(previous["image"].image_encoder.state_dict())
    elif config.uses_image and args.pretrained:
        model.load_pretrained_backbone(args.backbone_weights)
    if stage == "fusion" and "text" in previous:
        model.text_encoder.load_state_dict(previous["text"].text_encoder.state_dict())
    return model


def trainable_blocks_for(stage, args, model, previous) -> int | None:
    """0 (frozen) when the backbone starts from trained weights, None (everything trains) from scratch."""
    if not model.config.uses_image:
        return None
    if stage == "fusion" and args.fusion_encoders == "frozen" and "image" in previous:
        return 0  # the trained image model's encoder is kept whole
    if args.trainable_blocks is not None:
        return min(args.trainable_blocks, model.image_encoder.num_blocks)
    from_trained = args.pretrained or (stage == "fusion" and "image" in previous)
    return 0 if from_trained else None


# --------------------------------------------------------------------------------------------- loops


def batch_inputs(batch, model, tables, processor, photo_input, training, word_dropout=0.0):
    """Model keyword arguments for a batch of Rows.

    ``tables["photos"]`` holds one entry per photo, what ``photo_input`` names, and ``tables["mirrored"]``, when
    present, the same for the photos' mirror images (cached stem outputs): training draws one of the two views
    per row, evaluation averages their embeddings. ``tables["text_embeds"]``, when present, holds a frozen text
    encoder's embedding of each row's caption. ``word_dropout``: in training, the chance
    that each caption word is replaced by ``[UNK]`` (for a text encoder that trains).
    """
    config = model.config
    inputs = {"labels": batch["targets"]}  # the loss fits the targets; the metrics score batch["labels"]
    if config.uses_image:
        index = batch["photo_index"].cpu()
        photos = tables["photos"][index].to(batch["labels"].device)
        mirrored = tables["mirrored"][index].to(photos.device) if "mirrored" in tables else None
        if mirrored is not None and not training:  # the mean of the two views' embeddings, as at prediction
            inputs["image_embeds"] = (model.encode_image(stem_output=photos.float())
                                      + model.encode_image(stem_output=mirrored.float())) / 2
        elif photo_input in ("stem_output", "image_embeds"):
            if mirrored is not None:  # training: either view at random
                pick = torch.rand(len(index)) < 0.5
                photos = torch.where(pick.view(-1, *[1] * (photos.dim() - 1)).to(photos.device), mirrored, photos)
            inputs[photo_input] = photos.float()
        else:
            pixels = processor.normalize(photos)  # (B, 3, S, S)
            if training:  # horizontal flips: no concept depends on left and right
                flip = torch.rand(len(pixels), device=pixels.device) < 0.5
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            inputs["pixel_values"] = pixels.contiguous(memory_format=torch.channels_last)
    if config.uses_text and tables.get("text_embeds") is not None:
        inputs["text_embeds"] = tables["text_embeds"][batch["row"].cpu()].to(batch["labels"].device)
    elif config.uses_text:
        length = max(1, int(batch["attention_mask"].sum(1).max()))  # trim padding shared by the batch
        input_ids, attention_mask = batch["input_ids"][:, :length], batch["attention_mask"][:, :length]
        if training and word_dropout > 0:  # hide words behind [UNK] at random
            hidden = (torch.rand(input_ids.shape, device=input_ids.device) < word_dropout) & attention_mask.bool()
            input_ids = input_ids.masked_fill(hidden, processor.tokenizer.unk_token_id)
        inputs["input_ids"], inputs["attention_mask"] = input_ids, attention_mask
    return inputs


@torch.no_grad()
def frozen_embeds(encoder, encode, inputs: list[torch.Tensor], device, batch_size: int = 256) -> torch.Tensor:
    """(N, D) embeddings of a frozen encoder (inference mode): ``encode`` on batches of the ``inputs`` tensors."""
    encoder.to(device)
    was_training = encoder.training
    encoder.eval()  # a frozen encoder already is; its embedding must not depend on dropout draws
    try:
        return torch.cat([
            encode(*(t[s : s + batch_size].to(device) for t in inputs)).cpu() for s in range(0, len(inputs[0]), batch_size)
        ])
    finally:
        encoder.train(was_training)


@torch.no_grad()
def predict_rows(model, dataloader, tables, processor, photo_input, accelerator, desc):
    """Probabilities, targets and mean loss over a (sharded) dataloader, gathered across processes."""
    model.eval()
    probabilities, targets, losses = [], [], []
    for batch in tqdm(dataloader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        output = model(**batch_inputs(batch, accelerator.unwrap_model(model), tables, processor, photo_input, False))
        probs, labels = accelerator.gather_for_metrics((torch.sigmoid(output.logits.float()), batch["labels"]))
        loss = accelerator.gather_for_metrics(output.loss.detach().float().repeat(len(batch["labels"])))
        probabilities.append(probs.cpu())
        targets.append(labels.cpu())
        losses.append(loss.cpu())
    return torch.cat(probabilities).numpy(), torch.cat(targets).numpy(), float(torch.cat(losses).mean())


class TrainState:
    """Everything a resumed run needs besides model, optimizer, scheduler and RNG (which Accelerate saves)."""

    def __init__(self):
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_score, self.best_epoch, self.bad_epochs = -1.0, -1, 0
        self.best_state: dict | None = None
        self.history: list[dict] = []
        self.train_seconds = 0.0

    def state_dict(self):
        return dict(self.__dict__)

    def load_state_dict(self, state):
        self.__dict__.update(state)


def latest_checkpoint(directory: Path) -> Path | None:
    checkpoints = sorted((directory / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(accelerator, stage_dir: Path, state: TrainState, keep: int = 2) -> None:
    # Pickled weights, not safetensors: on a GPU, cuDNN flattens the LSTM's weights into one shared buffer,
    # and safetensors refuses to load tensors that share storage.
    accelerator.save_state(str(stage_dir / "checkpoints" / f"step_{state.global_step}"), safe_serialization=False)
    if accelerator.is_main_process:
        checkpoints = sorted((stage_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in checkpoints[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def train_stage(stage: str, args, data, accelerator, stage_dir: Path, previous: dict) -> MultiModalClassifier:
    """Train one model, keep its best epoch, tune thresholds, test it and save it into ``stage_dir``."""
    set_seed(args.seed)
    started = time.perf_counter()
    model = build_model(stage, args, data, previous)
    config = model.config
    processor = MultiModalProcessor.from_config(config, data["tokenizer"])
    blocks = trainable_blocks_for(stage, args, model, previous)
    if blocks is not None:
        model.freeze_backbone(blocks)
    if stage == "fusion" and args.fusion_encoders == "frozen":
        # Only encoders that come trained from the earlier stages are frozen; a fresh one must learn.
        model.freeze_encoders(image="image" in previous, text="text" in previous)
    uses_stem = config.uses_image and blocks is not None and args.cache_features
    # A frozen image encoder on cached features gives each photo one embedding: compute it once.
    uses_embeds = uses_stem and "image" in model.frozen_encoders
    photo_input = "image_embeds" if uses_embeds else "stem_output" if uses_stem else "pixel_values"
    if accelerator.device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    # Per split: the photos' resized pixels, the cached output of the frozen backbone part or a frozen image
    # encoder's embeddings; and a frozen text encoder's embedding of each pair's caption, computed once.
    tables = {split: {} for split in data["splits"]}
    for split, part in data["splits"].items():
        if config.uses_image:
            with accelerator.main_process_first():
                @functools.cache  # both views' caches may miss: the pixels are then opened once
                def load_pixels(photos=part["photos"]):
                    return photo_pixels(photos, processor, num_proc=args.preprocessing_num_proc)

                if uses_stem:  # the pixels are loaded only if the backbone's outputs are not cached yet
                    key = photos_key(part["photos"]) + str(config.image_size)
                    views = [
                        stem_outputs(load_pixels, key, model, processor, blocks, device=accelerator.device,
                                     num_photos=len(part["photos"]), mirror=mirror)
                        for mirror in ((False, True) if config.image_mirror_average else (False,))
                    ]
                else:
                    views = [load_pixels()]
            if uses_embeds:  # a frozen encoder embeds each photo once: the mean over its views, as at prediction
                views = [sum(frozen_embeds(model.image_encoder, lambda s: model.encode_image(stem_output=s.float()),
                                           [view], accelerator.device) for view in views) / len(views)]
            tables[split]["photos"] = views[0]
            if len(views) > 1:
                tables[split]["mirrored"] = views[1]
        if "text" in model.frozen_encoders:
            rows = part["pairs"]
            tables[split]["text_embeds"] = frozen_embeds(
                model.text_encoder, model.encode_text, [rows.input_ids, rows.attention_mask], accelerator.device
            )

    train_rows = data["splits"]["train"]["pairs"]
    if stage == "image":
        train_rows = photo_rows(train_rows, len(data["splits"]["train"]["photos"]))
    generator = torch.Generator().manual_seed(args.seed)
    train_dl = torch.utils.data.DataLoader(
        train_rows, batch_size=args.batch_size, shuffle=True, generator=generator, num_workers=args.num_workers,
        drop_last=len(train_rows) > args.batch_size,  # a batch of one breaks batch norm on a trainable backbone
    )
    eval_dls = {
        split: torch.utils.data.DataLoader(data["splits"][split]["pairs"], batch_size=args.batch_size * 2)
        for split in ("validation", "test")
    }
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    epochs = args.stage_epochs[stage]
    steps_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes / args.gradient_accumulation_steps)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=max(1, steps_per_epoch // 2), num_training_steps=steps_per_epoch * epochs
    )
    model, optimizer, train_dl, scheduler, val_dl, test_dl = accelerator.prepare(
        model, optimizer, train_dl, scheduler, eval_dls["validation"], eval_dls["test"]
    )
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    checkpoint = None
    if args.resume_from_checkpoint == "latest":
        checkpoint = latest_checkpoint(stage_dir)
    elif args.resume_from_checkpoint:
        checkpoint = Path(args.resume_from_checkpoint)
        if not checkpoint.is_dir():
            raise MMClassifierError(f"--resume-from-checkpoint {checkpoint} is not a folder.")
    if checkpoint is not None:
        accelerator.print(f"[{stage}] resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))

    backbone = "frozen" if blocks == 0 else "trainable" if blocks is None else f"last {blocks} stages trainable"
    accelerator.print(
        f"[{stage}] {len(train_rows)} training rows, {len(data['concepts'])} concepts"
        f"{f', backbone {backbone}' if config.uses_image else ''}"
        f"{''.join(f', {name} encoder frozen' for name in sorted(accelerator.unwrap_model(model).frozen_encoders))}"
        f"{', cached features' if uses_stem else ''}, {accelerator.num_processes} process(es) on {accelerator.device}"
    )
    unwrapped = accelerator.unwrap_model(model)
    while state.epoch < epochs and state.bad_epochs < args.early_stopping_patience:
        epoch_started = time.perf_counter()
        model.train()
        train_dl.set_epoch(state.epoch)
        # Resume mid-epoch: the epoch's shuffled order is reproduced from the seed, and its first batches skipped.
        epoch_dl = accelerator.skip_first_batches(train_dl, state.step_in_epoch) if state.step_in_epoch else train_dl
        losses = []
        progress = tqdm(
            epoch_dl, desc=f"[{stage}] epoch {state.epoch + 1}/{epochs}", leave=False,
            disable=not accelerator.is_local_main_process, initial=state.step_in_epoch, total=len(train_dl),
        )
        for batch in progress:
            # Dropout, modality and word dropout and flips draw from a generator seeded by the step, so a
            # resumed run makes the same draws as an uninterrupted one.
            torch.manual_seed(args.seed * 1_000_003 + state.global_step * 101 + accelerator.process_index)
            with accelerator.accumulate(model):
                output = model(**batch_inputs(batch, unwrapped, tables["train"], processor, photo_input, True,
                                              args.word_dropout))
                accelerator.backward(output.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            losses.append(output.loss.detach().float().item())
            state.step_in_epoch += 1
            if accelerator.sync_gradients:
                state.global_step += 1
                if args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0:
                    state.train_seconds += time.perf_counter() - epoch_started
                    epoch_started = time.perf_counter()
                    save_checkpoint(accelerator, stage_dir, state)
                    if args.kill_after_checkpoint == state.global_step:  # tests: a crash right after a checkpoint
                        os.kill(os.getpid(), signal.SIGKILL)
        state.train_seconds += time.perf_counter() - epoch_started
        probs, targets, val_loss = predict_rows(model, val_dl, tables["validation"], processor, photo_input, accelerator, "validating")
        metrics = compute_metrics(probs, targets, 0.5, data["concepts"])
        train_loss = float(accelerator.gather(torch.tensor([np.mean(losses) if losses else 0.0], device=accelerator.device)).mean())
        record = {
            "epoch": state.epoch + 1, "train_loss": train_loss, "validation_loss": val_loss,
            "validation_micro_f1": metrics["micro_f1"], "validation_mAP": metrics["mAP"] or 0.0,
        }
        state.history.append(record)
        accelerator.log(record, step=state.epoch + 1)
        accelerator.print(
            f"[{stage}] epoch {record['epoch']}: train loss {train_loss:.4f}, validation loss {val_loss:.4f}, "
            f"micro-F1 {metrics['micro_f1']:.3f}, mAP {record['validation_mAP']:.3f}"
        )
        # The best epoch is chosen by validation mAP: it does not depend on thresholds, tuned only afterwards.
        if record["validation_mAP"] > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = record["validation_mAP"], state.epoch + 1, 0
            state.best_state = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch += 1
        state.step_in_epoch = 0

    unwrapped.load_state_dict(state.best_state)
    val_probs, val_targets, _ = predict_rows(model, val_dl, tables["validation"], processor, photo_input, accelerator, "validating")
    # Thresholds: each concept's own, pulled toward a shared one as far as cross-validation over the
    # validation photos says (README, "Training").
    val_photos = data["splits"]["validation"]["pairs"].photo_index.numpy()
    if len(val_photos) != len(val_targets):
        raise RuntimeError(f"{len(val_targets)} validation predictions for {len(val_photos)} pairs")
    shrinkage, shrinkage_scores = select_threshold_shrinkage(val_probs, val_targets, groups=val_photos)
    unwrapped.config.thresholds = tune_thresholds(val_probs, val_targets, shrinkage=shrinkage)
    test_probs, test_targets, _ = predict_rows(model, test_dl, tables["test"], processor, photo_input, accelerator, "testing")
    results = {
        **{f"validation_{k}": v for k, v in _summary(compute_metrics(val_probs, val_targets, unwrapped.config.thresholds)).items()},
        **{f"test_{k}": v for k, v in _summary(compute_metrics(test_probs, test_targets, unwrapped.config.thresholds, data["concepts"])).items()},
        "threshold_shrinkage": shrinkage if math.isfinite(shrinkage) else "shared",
        # Cross-validated validation micro-F1 of each candidate strength ("inf": one shared threshold).
        "threshold_shrinkage_cv_micro_f1": {str(k).removesuffix(".0"): round(v, 4) for k, v in shrinkage_scores.items()},
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_seconds": round(state.train_seconds, 1),
        "stage_seconds": round(time.perf_counter() - started, 1),
        "num_processes": accelerator.num_processes,
        "train_rows": len(train_rows),
        "test_pairs": len(test_targets),
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_stage(unwrapped, processor, stage_dir, results, state.history, args, data)
    accelerator.print(
        f"[{stage}] test micro-F1 {results['test_micro_f1']:.3f}, macro-F1 {results['test_macro_f1']:.3f}, "
        f"mAP {results['test_mAP']:.3f} (best epoch {state.best_epoch}, {results['stage_seconds']:.0f} s) -> {stage_dir}"
    )
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # forget this stage's prepared objects before the next stage
    accelerator._custom_objects.clear()
    return unwrapped.cpu()


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def save_stage(model, processor, stage_dir: Path, results, history, args, data) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(stage_dir)
    processor.save_pretrained(stage_dir)
    (stage_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (stage_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
    plot_learning_curves(history, stage_dir / "learning_curves.png")
    write_model_card(stage_dir, model.config, results, dataset=args.dataset)
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # the run finished; its checkpoints are spent
    if args.push_to_hub:
        import huggingface_hub

        suffix = "" if model.config.modality == "fusion" else f"-{model.config.modality}"
        repo = huggingface_hub.create_repo(args.hub_model_id + suffix, exist_ok=True).repo_id
        huggingface_hub.upload_folder(repo_id=repo, folder_path=str(stage_dir))


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        args = resolve_defaults(args)
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=None if args.report_to == "none" else args.report_to,
            project_dir=str(args.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        data = prepare_data(args, accelerator)
        stages = [args.modality] if args.modality else list(STAGES)
        trained: dict[str, MultiModalClassifier] = {}
        for stage in stages:
            stage_dir = args.output_dir if args.modality else args.output_dir / stage
            if args.report_to != "none":
                accelerator.init_trackers(f"mm_classifier-{stage}", config={k: str(v) for k, v in vars(args).items()})
            if args.resume_from_checkpoint == "latest" and (stage_dir / "all_results.json").is_file():
                accelerator.print(f"[{stage}] already trained in {stage_dir}; resuming after it")
                trained[stage] = MultiModalClassifier.from_pretrained(str(stage_dir))
                continue
            trained[stage] = train_stage(stage, args, data, accelerator, stage_dir, trained)
        if not args.modality and not args.skip_report and accelerator.is_main_process:
            report = write_pipeline_report(
                args.output_dir, {s: args.output_dir / s for s in stages}, args.dataset, seed=args.split_seed,
                split=data["report_split"],
            )
            accelerator.print(f"Comparison of the three models: {report}")
        accelerator.end_training()
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
