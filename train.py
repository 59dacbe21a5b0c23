"""Train mm_classifier with Accelerate: an image-only, a text-only and a fusion model, or one of them.

    python train.py                                  # built-in sample -> outputs/{image,text,fusion}, report.md
    accelerate launch train.py --dataset DIR ...     # any number of CPU processes or GPUs
    python train.py --help                           # every option
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from mm_classifier import CONCEPT_LEXICON, MMClassifierError, MultiModalClassifier, MultiModalProcessor
from mm_classifier.data import SINGLE_LABEL, source_from_args
from mm_classifier.evaluation import write_pipeline_report
from mm_classifier.hub import push_folder
from mm_classifier.labels import load_concept_file
from mm_classifier.metrics import compute_metrics
from mm_classifier.pairs import SPLITS, PairCollator, PhotoInput, load_training_data, photo_rows
from mm_classifier.train_options import STAGES, build_parser, model_config, resolve_defaults
from mm_classifier.training import (
    TrainState,
    dataloaders,
    describe_training,
    loss_weights,
    optimizer_and_schedule,
    predict,
    resume,
    save_stage,
    split_inputs,
    train_epoch,
    tune_and_score,
)

# --------------------------------------------------------------------------------------------- model


def build_model(stage: str, args, data, previous: dict) -> tuple[MultiModalClassifier, PhotoInput | None]:
    """The stage's model, its encoders started from the earlier stages' or pretrained weights and frozen
    as far as they come trained; and what its batches read of the photos."""
    tokenizer, weights = data.tokenizer, None
    if args.class_weights == "auto":
        weights = loss_weights(data.splits["train"].pairs.labels, data.concepts, data.problem_type == SINGLE_LABEL)
    model = MultiModalClassifier(model_config(stage, args, data.concepts, len(tokenizer), tokenizer.pad_token_id,
                                              data.max_length, data.lexicon, data.problem_type, weights,
                                              train_pairs=len(data.splits["train"].pairs)))
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
    collators, pairs, unreadable = {}, {}, 0
    for split in SPLITS:  # photos and frozen encoders' embeddings, computed once (and cached) per split
        with accelerator.main_process_first():
            inputs = split_inputs(model, processor, data.splits[split], photo_input, accelerator.device,
                                  args.preprocessing_num_proc)
        collators[split] = PairCollator(processor, inputs, model.config.uses_image, model.config.uses_text)
        pairs[split], unreadable = inputs.pairs, unreadable + len(inputs.unreadable_photos)

    train_rows = pairs["train"]
    if stage == "image":
        train_rows = photo_rows(train_rows, len(data.splits["train"].photos))
    train_dl, val_dl, test_dl = dataloaders(train_rows, pairs["validation"], pairs["test"],
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
    accelerator.print(f"[{stage}] {len(train_rows)} training rows, {len(data.concepts)} "
                      f"{'classes (single-label)' if unwrapped.config.single_label else 'concepts'}, "
                      f"{describe_training(unwrapped, photo_input)}, {accelerator.num_processes} process(es) "
                      f"on {accelerator.device}")

    f1_name = "accuracy" if unwrapped.config.single_label else "micro-F1"  # the same number for one label a row
    while state.epoch < epochs and state.bad_epochs < args.early_stopping_patience:
        train_loss = train_epoch(model, train_dl, collators["train"], optimizer, scheduler, accelerator, state,
                                 seed=args.seed, desc=f"[{stage}] epoch {state.epoch + 1}/{epochs}",
                                 checkpointing_steps=args.checkpointing_steps, stage_dir=stage_dir)
        logits, labels, val_loss = predict(model, val_dl, collators["validation"], accelerator, "validating")
        probs = unwrapped.probabilities(torch.from_numpy(logits)).numpy()
        metrics = compute_metrics(probs, labels, 0.5, data.concepts, single_label=unwrapped.config.single_label)
        record = {"epoch": state.epoch + 1, "train_loss": train_loss, "validation_loss": val_loss,
                  "validation_micro_f1": metrics["micro_f1"], "validation_mAP": metrics["mAP"] or 0.0}
        state.end_epoch(record, unwrapped)
        accelerator.log(record, step=record["epoch"])
        accelerator.print(f"[{stage}] epoch {record['epoch']}: train loss {train_loss:.4f}, validation loss "
                          f"{val_loss:.4f}, {f1_name} {metrics['micro_f1']:.3f}, mAP {record['validation_mAP']:.3f}")

    unwrapped.load_state_dict(state.best_state)
    val = predict(model, val_dl, collators["validation"], accelerator, "validating")[:2]
    test = predict(model, test_dl, collators["test"], accelerator, "testing")[:2]
    results = {
        **tune_and_score(unwrapped, val, test, pairs["validation"].photo_index.numpy(), data.concepts),
        "best_epoch": state.best_epoch, "epochs_run": state.epoch, "train_seconds": round(state.train_seconds, 1),
        "stage_seconds": round(time.perf_counter() - started, 1), "num_processes": accelerator.num_processes,
        "train_rows": len(train_rows), "test_pairs": len(test[1]), "skipped_rows": data.skipped_rows,
        "unreadable_photos": unreadable,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_stage(unwrapped, processor, stage_dir, results, state.history, vars(args), args.dataset)
        if args.push_to_hub:
            suffix = "" if stage == "fusion" else f"-{stage}"
            push_folder(stage_dir, args.hub_model_id + suffix)
    accelerator.print(
        f"[{stage}] test {f1_name} {results['test_micro_f1']:.3f}, macro-F1 {results['test_macro_f1']:.3f}, "
        f"mAP {results['test_mAP']:.3f} (best epoch {state.best_epoch}, {results['stage_seconds']:.0f} s) "
        f"-> {stage_dir}"
    )
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # forget this stage's prepared objects before the next stage
    return unwrapped.cpu()


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser(__doc__).parse_args(argv)
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
            text_encoder=args.text_encoder, max_length=args.max_length, problem_type=args.problem_type,
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
                                           source_from_args(args), seed=args.split_seed, split=data.report_split,
                                           baselines=not args.skip_baselines)
            accelerator.print(f"Comparison of the three models: {report}")
        accelerator.end_training()
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
