"""Train mm_classifier with Accelerate: an image-only, a text-only and a fusion model, or one of them.

    python train.py                                  # built-in sample -> outputs/{image,text,fusion}, report.md
    accelerate launch train.py --dataset DIR ...     # any number of CPU processes or GPUs
    python train.py --help                           # every option
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from mm_classifier import (
    CONCEPT_LEXICON,
    MMClassifierError,
    MultiModalClassifier,
    MultiModalConfig,
    MultiModalProcessor,
)
from mm_classifier.data import add_source_arguments, check_source, source_from_args
from mm_classifier.evaluation import write_pipeline_report
from mm_classifier.fusion import FUSION_TYPES
from mm_classifier.hub import check_hub_access, check_pretrained_download, push_folder
from mm_classifier.labels import DEFAULT_NUM_CONCEPTS, load_concept_file
from mm_classifier.metrics import compute_metrics
from mm_classifier.options import HelpFormatter, at_least, config_argument
from mm_classifier.pairs import SPLITS, PairCollator, PhotoInput, load_training_data, photo_rows
from mm_classifier.text_models import (
    AUTO,
    MAX_LENGTH_QUANTILE,
    check_text_encoder,
    encoder_type,
    pretrained_text_config,
)
from mm_classifier.tokenization import DEFAULT_MAX_LENGTH
from mm_classifier.training import (
    TrainState,
    dataloaders,
    describe_training,
    optimizer_and_schedule,
    predict,
    resume,
    save_stage,
    split_inputs,
    train_epoch,
    tune_and_score,
)

STAGES = ("image", "text", "fusion")
DEFAULT_EPOCHS = 15
# Without a pretrained encoder: the lstm for short captions, the bag for longer texts (text_models.AUTO; the
# measurements behind it are in docs/experiments.md).
DEFAULT_TEXT_ENCODER = AUTO
# The built-in sample's own defaults, where they differ from real data's (resolve_defaults applies them; the help
# names both). The sample is tiny and offline: no pretrained weights. MobileNetV2 learns too slowly from scratch on
# a CPU for the sample's few minutes; timm's tiny EfficientNet learns the sample's scenes in about a minute.
SAMPLE_DEFAULTS = {
    "pretrained": False,
    "backbone": "test_efficientnet",
    "image_size": 64,
    "epochs": {"image": 40, "text": 8, "fusion": 8},
}


# --------------------------------------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    """train.py's options, with their defaults in the help; docs/training.md's table lists each. A model option is
    a MultiModalConfig field: its flag, default and help come from the config (``config_argument``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="sample", help="a data folder or file, a hub id, or 'sample'")
    add_source_arguments(data)  # --image-column, --caption-column, --label-column, --image-dir
    data.add_argument("--labels", type=Path, help="given labels: file naming the label set (default: training labels)")
    data.add_argument("--concepts", type=Path, help="JSON concept file, concept -> words (default: built-in)")
    data.add_argument("--num-concepts", type=at_least(1), default=DEFAULT_NUM_CONCEPTS,
                      help="how many of the most frequent concepts to learn")
    config_argument(data, "min_votes", type=at_least(1))
    data.add_argument("--seed", type=int, default=0, help="seeds training, and the split unless --split-seed")
    data.add_argument("--split-seed", type=int, help="seeds the split only (default: --seed)")

    model = p.add_argument_group("model")
    model.add_argument("--modality", choices=STAGES, help="train only this model (default: all three)")
    config_argument(model, "backbone", sample=SAMPLE_DEFAULTS["backbone"])
    model.add_argument("--backbone-pad-type", help="timm pad_type, e.g. 'same' for TensorFlow weights")
    model.add_argument("--backbone-weights", type=Path, help="local safetensors weights (implies --pretrained)")
    on_off = argparse.BooleanOptionalAction
    model.add_argument("--pretrained", action=on_off, help=f"start the backbone from pretrained weights (default: "
                       f"True; the sample: {SAMPLE_DEFAULTS['pretrained']})")
    model.add_argument("--trainable-blocks", type=at_least(0), help="train the backbone's last N stages (default: 0 "
                       "for a pretrained backbone; one trained from scratch trains whole)")
    config_argument(model, "image_feature_blocks", type=int, nargs="+", metavar="BLOCK", default_help="the head's")
    config_argument(model, "image_local_projection")
    config_argument(model, "image_size", type=at_least(16), sample=SAMPLE_DEFAULTS["image_size"])
    config_argument(model, "image_mean", nargs=3)
    config_argument(model, "image_std", nargs=3)
    model.add_argument("--cache-features", action=on_off, default=True, help="cache the frozen backbone's outputs")
    model.add_argument("--mirror-photos", action=on_off, default=True, help="train on and average mirror images too")
    model.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER,
                       help="lstm, bag, auto (the lstm if 95%% of the training texts fit in "
                       f"{DEFAULT_MAX_LENGTH} tokens, else the bag), or a transformers encoder's hub id or folder")
    config_argument(model, "text_trainable_layers", type=at_least(0))
    config_argument(model, "max_length", type=at_least(1), default=None, default_help=(
        f"from the training texts: enough for {MAX_LENGTH_QUANTILE}% of them, at least {DEFAULT_MAX_LENGTH}, at most "
        f"the text encoder's own limit"))
    config_argument(model, "fusion_type", choices=sorted(FUSION_TYPES))
    model.add_argument("--fusion-encoders", choices=["frozen", "trainable"], default="frozen",
                       help="fusion: keep the encoders trained by the image and text stages fixed, or fine-tune them")
    config_argument(model, "modality_dropout")
    config_argument(model, "dropout")

    train = p.add_argument_group("training")
    sample_epochs = ", ".join(f"{stage} {n}" for stage, n in SAMPLE_DEFAULTS["epochs"].items())
    train.add_argument("--epochs", type=at_least(1), help=f"per model (default: {DEFAULT_EPOCHS}; the sample: "
                       f"{sample_epochs})")
    train.add_argument("--batch-size", type=at_least(1), default=64, help="per process")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW's, after half an epoch of warm-up; "
                       "cosine decay")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's")
    train.add_argument("--early-stopping-patience", type=int, default=5,
                       help="stop after this many epochs without a validation mAP gain")
    train.add_argument("--gradient-accumulation-steps", type=at_least(1), default=1,
                       help="batches per optimizer step")
    train.add_argument("--max-train-samples", type=int, help="use only this many training photos (default: all)")

    run = p.add_argument_group("runtime")
    run.add_argument("--output-dir", type=Path, default=Path("outputs"),
                     help="the models (image/, text/, fusion/) and report.md; with --modality, the model itself")
    run.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no", help="on a GPU")
    run.add_argument("--checkpointing-steps", type=int, help="save the training state every N optimizer steps")
    run.add_argument("--resume-from-checkpoint", help="'latest' or a checkpoint folder")
    run.add_argument("--report-to", choices=["none", "tensorboard"], default="none",
                     help="log each epoch's losses and validation metrics (into --output-dir)")
    run.add_argument("--push-to-hub", action="store_true", help="upload each model (needs internet and a token)")
    run.add_argument("--hub-model-id", help="hub repo for --push-to-hub (-image/-text suffix per stage)")
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    run.add_argument("--preprocessing-num-proc", type=int, default=min(2, os.cpu_count() or 1),
                     help="processes that resize the photos for the pixel cache (default: 2; 1 on a one-CPU machine)")
    run.add_argument("--skip-report", action="store_true", help="do not write the comparison report.md")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on the data (the sample is tiny and has no pretrained weights), checked before
    any data loads: a mistake costs seconds, not a training run."""
    sample = args.dataset == "sample"
    check_source(args.dataset)  # before the pretrained-weights check, whose message would hide this one
    if args.backbone_weights is not None:
        if args.pretrained is False:
            raise MMClassifierError("--backbone-weights and --no-pretrained contradict each other.")
        if not args.backbone_weights.is_file():
            raise MMClassifierError(f"--backbone-weights {args.backbone_weights} does not exist.")
        args.pretrained = True
    if args.pretrained is None:
        args.pretrained = SAMPLE_DEFAULTS["pretrained"] if sample else True
    args.split_seed = args.seed if args.split_seed is None else args.split_seed
    args.image_size = args.image_size or (SAMPLE_DEFAULTS["image_size"] if sample else MultiModalConfig.image_size)
    # The sample's backbone is one that learns from scratch; asked for pretrained weights, it gets the real default.
    args.backbone = args.backbone or (SAMPLE_DEFAULTS["backbone"] if sample and not args.pretrained
                                      else MultiModalConfig.backbone)
    check_text_encoder(args.text_encoder)
    args.text_model_config, args.text_pooling = None, "mean"
    if encoder_type(args.text_encoder) == "transformers":
        args.text_model_config, args.text_pooling = pretrained_text_config(args.text_encoder)
    elif args.text_trainable_layers:
        raise MMClassifierError(f"--text-trainable-layers fine-tunes a pretrained text encoder; --text-encoder "
                                f"{args.text_encoder} learns from scratch and trains whole.")
    args.stage_epochs = {stage: args.epochs or (SAMPLE_DEFAULTS["epochs"][stage] if sample else DEFAULT_EPOCHS)
                         for stage in STAGES}
    args.epochs = args.epochs or max(args.stage_epochs.values())
    for stage in STAGES:  # the config checks its own fields (dropouts, sizes, ...): now, not after loading
        try:
            model_config(stage, args, concepts=["concept"], vocab_size=2, pad_token_id=0, max_length=1)
        except ValueError as err:
            raise MMClassifierError(f"{err} (from the options of train.py)") from err
    if args.pretrained and args.backbone_weights is None and args.modality != "text":  # a text model has no backbone
        check_pretrained_download()
    if args.push_to_hub:
        check_hub_access(args.hub_model_id)
    return args


# --------------------------------------------------------------------------------------------- model


def model_config(stage: str, args, concepts: list[str], vocab_size: int, pad_token_id: int, max_length: int,
                 lexicon=None):
    return MultiModalConfig(
        modality=stage,
        backbone=args.backbone,
        backbone_kwargs={"pad_type": args.backbone_pad_type} if args.backbone_pad_type else {},
        image_size=args.image_size,
        image_feature_blocks=args.image_feature_blocks,
        image_local_projection=args.image_local_projection,
        image_mirror_average=args.mirror_photos,
        image_mean=args.image_mean,
        image_std=args.image_std,
        text_encoder_type=encoder_type(args.text_encoder),
        text_model_config=args.text_model_config,
        text_model_name=None if args.text_model_config is None else args.text_encoder,
        text_pooling=args.text_pooling,
        text_trainable_layers=args.text_trainable_layers,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        max_length=max_length,
        fusion_type=args.fusion_type,
        dropout=args.dropout,
        modality_dropout=args.modality_dropout if stage == "fusion" else 0.0,
        id2label=dict(enumerate(concepts)),
        concept_words={c: list(lexicon.get(c, [c])) for c in concepts} if lexicon is not None else None,
        min_votes=args.min_votes,
    )


def build_model(stage: str, args, data, previous: dict) -> tuple[MultiModalClassifier, PhotoInput | None]:
    """The stage's model, its encoders started from the earlier stages' or pretrained weights and frozen
    as far as they come trained; and what its batches read of the photos."""
    tokenizer = data.tokenizer
    model = MultiModalClassifier(model_config(stage, args, data.concepts, len(tokenizer), tokenizer.pad_token_id,
                                              data.max_length, data.lexicon))
    reuse_image = stage == "fusion" and "image" in previous
    if reuse_image:
        model.image_encoder.load_state_dict(previous["image"].image_encoder.state_dict())
    elif model.config.uses_image and args.pretrained:
        model.load_pretrained_backbone(args.backbone_weights)
    if stage == "fusion" and "text" in previous:
        model.text_encoder.load_state_dict(previous["text"].text_encoder.state_dict())
    elif model.config.uses_text and model.config.text_encoder_type == "transformers":
        model.text_encoder.load_pretrained(args.text_encoder)
    elif model.config.uses_text and model.config.text_encoder_type == "bag":
        train_pairs = data.splits["train"].pairs
        model.text_encoder.fit_token_weights(train_pairs.input_ids, train_pairs.attention_mask)
    if not model.config.uses_image:
        return model, None
    frozen_fusion = stage == "fusion" and args.fusion_encoders == "frozen"
    if frozen_fusion and reuse_image:
        model.freeze_backbone(0)  # the trained image model's encoder is kept whole
    elif args.trainable_blocks is not None or args.pretrained or reuse_image:
        model.freeze_backbone(min(args.trainable_blocks or 0, model.image_encoder.num_stages - 1))
    if frozen_fusion:  # only encoders that come trained from the earlier stages are frozen; a fresh one must learn
        model.freeze_encoders(image=reuse_image, text="text" in previous)
    if not args.cache_features or model.image_encoder.trainable_blocks != 0:  # only a frozen backbone is cached
        return model, PhotoInput.PIXELS
    return model, PhotoInput.IMAGE_EMBEDS if "image" in model.frozen_encoders else PhotoInput.FROZEN_FEATURES


# --------------------------------------------------------------------------------------------- one stage


def train_stage(stage: str, args, data, accelerator, state: TrainState, stage_dir: Path, previous: dict):
    """Train one model, keep its best epoch, tune thresholds, test it and save it into ``stage_dir``."""
    set_seed(args.seed)
    started = time.perf_counter()
    model, photo_input = build_model(stage, args, data, previous)
    processor = MultiModalProcessor.from_config(model.config, data.tokenizer)
    if accelerator.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    collators = {}
    for split in SPLITS:  # photos and frozen encoders' embeddings, computed once (and cached) per split
        with accelerator.main_process_first():
            inputs = split_inputs(model, processor, data.splits[split], photo_input, accelerator.device,
                                  args.preprocessing_num_proc)
        collators[split] = PairCollator(processor, inputs, model.config.uses_image, model.config.uses_text)

    train_rows = data.splits["train"].pairs
    if stage == "image":
        train_rows = photo_rows(train_rows, len(data.splits["train"].photos))
    train_dl, val_dl, test_dl = dataloaders(train_rows, data.splits["validation"].pairs, data.splits["test"].pairs,
                                            args.batch_size, seed=args.seed, num_workers=args.num_workers)
    epochs = args.stage_epochs[stage]
    steps_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes / args.gradient_accumulation_steps)
    optimizer, scheduler = optimizer_and_schedule(model, args.learning_rate, args.weight_decay, steps_per_epoch, epochs)
    model, optimizer, train_dl, scheduler, val_dl, test_dl = accelerator.prepare(
        model, optimizer, train_dl, scheduler, val_dl, test_dl
    )
    unwrapped = accelerator.unwrap_model(model)
    state.reset()
    checkpoint = resume(accelerator, stage_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.print(f"[{stage}] resuming from {checkpoint}")
    accelerator.print(f"[{stage}] {len(train_rows)} training rows, {len(data.concepts)} concepts, "
                      f"{describe_training(unwrapped, photo_input)}, {accelerator.num_processes} process(es) "
                      f"on {accelerator.device}")

    while state.epoch < epochs and state.bad_epochs < args.early_stopping_patience:
        train_loss = train_epoch(model, train_dl, collators["train"], optimizer, scheduler, accelerator, state,
                                 seed=args.seed, desc=f"[{stage}] epoch {state.epoch + 1}/{epochs}",
                                 checkpointing_steps=args.checkpointing_steps, stage_dir=stage_dir)
        probs, labels, val_loss = predict(model, val_dl, collators["validation"], accelerator, "validating")
        metrics = compute_metrics(probs, labels, 0.5, data.concepts)
        record = {"epoch": state.epoch + 1, "train_loss": train_loss, "validation_loss": val_loss,
                  "validation_micro_f1": metrics["micro_f1"], "validation_mAP": metrics["mAP"] or 0.0}
        state.end_epoch(record, unwrapped)
        accelerator.log(record, step=record["epoch"])
        accelerator.print(f"[{stage}] epoch {record['epoch']}: train loss {train_loss:.4f}, validation loss "
                          f"{val_loss:.4f}, micro-F1 {metrics['micro_f1']:.3f}, mAP {record['validation_mAP']:.3f}")

    unwrapped.load_state_dict(state.best_state)
    val = predict(model, val_dl, collators["validation"], accelerator, "validating")[:2]
    test = predict(model, test_dl, collators["test"], accelerator, "testing")[:2]
    results = {
        **tune_and_score(unwrapped, val, test, data.splits["validation"].pairs.photo_index.numpy(), data.concepts),
        "best_epoch": state.best_epoch, "epochs_run": state.epoch, "train_seconds": round(state.train_seconds, 1),
        "stage_seconds": round(time.perf_counter() - started, 1), "num_processes": accelerator.num_processes,
        "train_rows": len(train_rows), "test_pairs": len(test[1]),
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_stage(unwrapped, processor, stage_dir, results, state.history, vars(args), args.dataset)
        if args.push_to_hub:
            suffix = "" if stage == "fusion" else f"-{stage}"
            push_folder(stage_dir, args.hub_model_id + suffix)
    accelerator.print(
        f"[{stage}] test micro-F1 {results['test_micro_f1']:.3f}, macro-F1 {results['test_macro_f1']:.3f}, "
        f"mAP {results['test_mAP']:.3f} (best epoch {state.best_epoch}, {results['stage_seconds']:.0f} s) "
        f"-> {stage_dir}"
    )
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # forget this stage's prepared objects before the next stage
    return unwrapped.cpu()


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: benchmarks/fusion_seeds.py replays it
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
        data = load_training_data(
            source_from_args(args), labels_file=args.labels, split_seed=args.split_seed, min_votes=args.min_votes,
            num_concepts=args.num_concepts,
            lexicon=load_concept_file(args.concepts) if args.concepts else CONCEPT_LEXICON,
            max_train_samples=args.max_train_samples, main_process_first=accelerator.main_process_first,
            text_encoder=args.text_encoder, max_length=args.max_length,
        )
        args.text_encoder = data.text_encoder  # auto: the word-level encoder chosen for these texts
        if data.held_out_photos:
            accelerator.print(f"The test split is empty (withheld): the official validation split serves as the test "
                              f"split, and {data.held_out_photos} training photos as the validation split.")
        state = TrainState()  # one for every stage: Accelerate checkpoints the objects registered with it
        accelerator.register_for_checkpointing(state)
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
            trained[stage] = train_stage(stage, args, data, accelerator, state, stage_dir, trained)
        if not args.modality and not args.skip_report and accelerator.is_main_process:
            report = write_pipeline_report(args.output_dir, {s: args.output_dir / s for s in stages},
                                           source_from_args(args), seed=args.split_seed, split=data.report_split)
            accelerator.print(f"Comparison of the three models: {report}")
        accelerator.end_training()
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
