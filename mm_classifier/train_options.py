"""train.py's options: the parser (model options made from MultiModalConfig's fields by ``options.py``), the
defaults that depend on the data, checked before any data loads, and the model config a stage's options give."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .configuration import PROBLEM_TYPES, MultiModalConfig
from .data import add_source_arguments, check_source
from .errors import MMClassifierError
from .fusion import FUSION_TYPES
from .hub import check_hub_access, check_pretrained_download
from .labels import DEFAULT_NUM_CONCEPTS
from .options import HelpFormatter, at_least, config_argument
from .sample import BUILT_IN
from .text_models import AUTO, MAX_LENGTH_QUANTILE, check_text_encoder, encoder_type, pretrained_text_config
from .tokenization import DEFAULT_MAX_LENGTH

STAGES = ("image", "text", "fusion")
DEFAULT_EPOCHS = 15
# The measurements behind it are in docs/experiments.md ("Class weights").
DEFAULT_CLASS_WEIGHTS = "none"
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


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's options, with their defaults in the help; docs/training.md's table lists each. A model option is
    a MultiModalConfig field: its flag, default and help come from the config (``config_argument``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    _data_options(p.add_argument_group("data"))
    _model_options(p.add_argument_group("model"))
    _training_options(p.add_argument_group("training"))
    _runtime_options(p.add_argument_group("runtime"))
    return p


def _data_options(data) -> None:
    """train.py's data options: where the data comes from, how it is labelled and split."""
    data.add_argument("--dataset", default="sample", help="a data folder or file, a hub id, 'sample', or "
                      "'sample-grounds' (the sample, each photo labelled with its one ground: single-label)")
    add_source_arguments(data)  # --image-column, --caption-column, --label-column, --image-dir
    data.add_argument("--labels", type=Path, help="given labels: file naming the label set (default: training labels)")
    data.add_argument("--concepts", type=Path, help="JSON concept file, concept -> words (default: built-in)")
    data.add_argument("--num-concepts", type=at_least(1), default=DEFAULT_NUM_CONCEPTS,
                      help="how many of the most frequent concepts to learn")
    config_argument(data, "min_votes", type=at_least(1))
    data.add_argument("--problem-type", choices=PROBLEM_TYPES, help="single_label_classification: one class a photo "
                      "(softmax); multi_label_classification: any number of concepts (default: single-label when "
                      "every training photo has exactly one given label, else multi-label)")
    data.add_argument("--seed", type=int, default=0, help="seeds training, and the split unless --split-seed")
    data.add_argument("--split-seed", type=int, help="seeds the split only (default: --seed)")


def _model_options(model) -> None:
    """train.py's model options: encoders and fusion (MultiModalConfig fields, through ``config_argument``)."""
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


def _training_options(train) -> None:
    """train.py's training options: optimisation, epochs and loss."""
    sample_epochs = ", ".join(f"{stage} {n}" for stage, n in SAMPLE_DEFAULTS["epochs"].items())
    train.add_argument("--epochs", type=at_least(1), help=f"per model (default: {DEFAULT_EPOCHS}; the sample: "
                       f"{sample_epochs})")
    train.add_argument("--batch-size", type=at_least(1), default=64, help="per process")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW's, after half an epoch of warm-up; "
                       "cosine decay")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's")
    train.add_argument("--class-weights", choices=["none", "auto"], default=DEFAULT_CLASS_WEIGHTS,
                       help="auto: weigh the loss by the training labels' frequencies (multi-label: each concept's "
                       "positives by negatives/positives; single-label: each class by N / (classes x its examples))")
    train.add_argument("--early-stopping-patience", type=int, default=5,
                       help="stop after this many epochs without a validation mAP gain")
    train.add_argument("--gradient-accumulation-steps", type=at_least(1), default=1,
                       help="batches per optimizer step")
    train.add_argument("--max-train-samples", type=int, help="use only this many training photos (default: all)")


def _runtime_options(run) -> None:
    """train.py's runtime options: outputs, checkpoints, processes and reports."""
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
    run.add_argument("--skip-baselines", action="store_true",
                     help="report.md without the logistic-regression baselines (for data too large to want them)")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on the data (the sample is tiny and has no pretrained weights), checked before
    any data loads: a mistake costs seconds, not a training run."""
    sample = args.dataset in BUILT_IN
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


def model_config(stage: str, args, concepts: list[str], vocab_size: int, pad_token_id: int, max_length: int,
                 lexicon=None, problem_type: str | None = None, loss_weights: list[float] | None = None,
                 train_pairs: int = 1):
    """The stage's config. ``loss_weights``: ``--class-weights``' per-concept weights (positives' weights for a
    multi-label model, classes' for a single-label one). ``train_pairs``: how many pairs the bag's L2 penalty
    is spread over: it is the TF-IDF baseline's, ``1 / (2 C)`` times the sum of squared weights against the
    sum of the pairs' losses (C = ``baselines.INVERSE_REGULARISATION``), here against their mean loss (over
    the concepts too, for a multi-label model's BCE)."""
    from .baselines import INVERSE_REGULARISATION

    single_label = problem_type == "single_label_classification"
    loss_terms = train_pairs * (1 if single_label else len(concepts))
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
        bag_l2=1 / (2 * INVERSE_REGULARISATION * max(1, loss_terms)) if args.text_encoder == "bag" else 0.0,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        max_length=max_length,
        fusion_type=args.fusion_type,
        dropout=args.dropout,
        modality_dropout=args.modality_dropout if stage == "fusion" else 0.0,
        id2label=dict(enumerate(concepts)),
        concept_words={c: list(lexicon.get(c, [c])) for c in concepts} if lexicon is not None else None,
        min_votes=args.min_votes,
        problem_type=problem_type,
        pos_weight=None if single_label else loss_weights,
        class_weights=loss_weights if single_label else None,
    )
