"""The pieces ``train.py`` tells a training stage with: inputs computed once, epochs, validation, checkpoints."""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from .calibration import expected_calibration_error, fit_calibration
from .errors import MMClassifierError
from .features import cached_caption_features, cached_frozen_features, photo_pixels, photos_key
from .metrics import compute_metrics
from .modelcard import write_model_card
from .pairs import PairCollator, PairTable, PhotoInput, Split, SplitInputs, without_photos
from .plots import plot_learning_curves
from .serving import text_encoder_description
from .thresholds import select_threshold_shrinkage, tune_thresholds

# --------------------------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """Everything a resumed run needs besides model, optimizer, scheduler and RNG (which Accelerate saves).

    One object serves every stage of a run (registered once with ``register_for_checkpointing``);
    :meth:`reset` starts a stage.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0

    def reset(self) -> None:
        self.__dict__.update(TrainState().__dict__)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    def end_epoch(self, record: dict, model: torch.nn.Module) -> None:
        """Log the epoch and keep the weights of the best one so far, by validation mAP (which, unlike F1,
        does not depend on the thresholds tuned only afterwards)."""
        self.history.append(record)
        if record["validation_mAP"] > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = record["validation_mAP"], self.epoch + 1, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        self.epoch += 1
        self.step_in_epoch = 0


def _checkpoints(stage_dir: Path) -> list[Path]:
    return sorted((stage_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(accelerator, stage_dir: Path, state: TrainState, keep: int = 2) -> None:
    """The full training state at this step, into ``stage_dir/checkpoints/step_N``; older ones beyond ``keep`` go."""
    # Pickled weights, not safetensors: on a GPU, cuDNN flattens the LSTM's weights into one shared buffer,
    # and safetensors refuses to load tensors that share storage.
    accelerator.save_state(str(stage_dir / "checkpoints" / f"step_{state.global_step}"), safe_serialization=False)
    if accelerator.is_main_process:
        for old in _checkpoints(stage_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def resume(accelerator, stage_dir: Path, checkpoint: str | None) -> Path | None:
    """Load ``checkpoint`` (a folder, or ``"latest"`` of this stage's) into the prepared objects; None: none."""
    if checkpoint == "latest":
        found = _checkpoints(stage_dir)
        path = found[-1] if found else None
    elif checkpoint:
        path = Path(checkpoint)
        if not path.is_dir():
            raise MMClassifierError(f"--resume-from-checkpoint {path} is not a folder.")
    else:
        path = None
    if path is not None:
        accelerator.load_state(str(path))
    return path


# --------------------------------------------------------------------------------------------- inputs


@torch.no_grad()
def frozen_embeds(encoder, encode, inputs: list, device, batch_size: int = 256) -> torch.Tensor:
    """(N, D) embeddings of a frozen encoder: ``encode`` on batches of the ``inputs`` tables (row-aligned)."""
    encoder.to(device)
    was_training = encoder.training
    encoder.eval()  # a frozen encoder already is; its embedding must not depend on dropout draws
    try:
        return torch.cat([
            encode(*(t[s : s + batch_size].to(device) for t in inputs)).cpu()
            for s in range(0, len(inputs[0]), batch_size)
        ])
    finally:
        encoder.train(was_training)


def split_inputs(
    model, processor, split: Split, photo_input: PhotoInput | None, device, num_proc: int | None
) -> SplitInputs:
    """What a split's batches read, computed once per stage: the photos' pixels, their cached frozen features
    (and their mirror images'), or a frozen image encoder's embeddings; a frozen text encoder's caption embeddings,
    or a frozen transformers encoder's caption vectors (cached on disk).

    ``inputs.pairs`` are the split's pair rows that the stage uses: without the pairs of photos that no longer
    decode (deleted or damaged after the data set loaded), which the tables computed per caption follow.

    Call it inside Accelerate's ``main_process_first`` so that other processes reuse the caches.
    """
    inputs = SplitInputs(photo_input=photo_input, pairs=split.pairs)
    if photo_input is not None:
        inputs.photos, inputs.mirrored, inputs.unreadable_photos = _photo_tables(model, processor, split.photos,
                                                                                 photo_input, device, num_proc)
        inputs.pairs = without_photos(split.pairs, inputs.unreadable_photos)
    if not model.config.uses_text:
        return inputs
    tokens = [inputs.pairs.input_ids, inputs.pairs.attention_mask]
    if model.config.text_encoder_type == "transformers" and model.text_encoder.trainable_layers == 0:
        inputs.caption_features = cached_caption_features(model, *tokens, device=device)
    if "text" in model.frozen_encoders and inputs.caption_features is None:
        inputs.text_embeds = frozen_embeds(model.text_encoder, model.encode_text, tokens, device)
    elif "text" in model.frozen_encoders:  # the projection of the cached vectors is all that runs
        inputs.text_embeds = frozen_embeds(model.text_encoder, lambda features: model.encode_text(
            caption_features=features), [inputs.caption_features], device)
        inputs.caption_features = None
    return inputs


def _photo_tables(model, processor, photos, photo_input: PhotoInput, device, num_proc):
    """(photos, mirrored, unreadable) of one split for ``photo_input``: mirrored is None without mirror averaging;
    unreadable lists the photos that no longer decode (found when the pixels are read)."""

    @functools.cache  # both views' caches may miss: the pixels are then opened once
    def load_pixels():
        return photo_pixels(photos, processor, num_proc=num_proc)

    if photo_input is PhotoInput.PIXELS:
        return load_pixels(), None, load_pixels().unreadable
    key = photos_key(photos) + str(model.config.image_size)
    mirrors = (False, True) if model.config.image_mirror_average else (False,)
    # The pixels are loaded only if the backbone's outputs are not cached yet.
    views = [
        cached_frozen_features(load_pixels, key, model, processor, device=device, num_photos=len(photos), mirror=mirror)
        for mirror in mirrors
    ]
    unreadable = load_pixels().unreadable if load_pixels.cache_info().currsize else []
    if photo_input is PhotoInput.IMAGE_EMBEDS:  # each photo's embedding, the mean over its views as at prediction

        def embed(plain, mirrored=None):
            return model.encode_image(frozen_features=plain.float(),
                                      mirrored_frozen_features=None if mirrored is None else mirrored.float())

        return frozen_embeds(model.image_encoder, embed, views, device), None, unreadable
    return views[0], views[1] if len(views) > 1 else None, unreadable


# --------------------------------------------------------------------------------------------- loops


def dataloaders(train: PairTable, validation: PairTable, test: PairTable, batch_size: int, *, seed: int,
                num_workers: int = 0) -> tuple:
    """Shuffled (seeded) training batches; validation and test batches twice as large, in order."""
    train_dl = torch.utils.data.DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        drop_last=len(train) > batch_size,  # a batch of one breaks batch norm on a trainable backbone
    )
    return train_dl, *(torch.utils.data.DataLoader(pairs, batch_size=batch_size * 2) for pairs in (validation, test))


def optimizer_and_schedule(model, learning_rate: float, weight_decay: float, steps_per_epoch: int, epochs: int):
    """AdamW on the trainable parameters, with half an epoch of warm-up (at least one step) and cosine decay.

    A part of the model may scale ``learning_rate`` for its own parameters: a module's ``LEARNING_RATE_SCALES``
    maps a parameter name prefix (within the module) to a factor (the bag's table learns 100 times faster, a
    pretrained encoder's layers fine-tune 30 times slower).
    """
    scales = {}
    for module_name, module in model.named_modules():
        for prefix, scale in getattr(module, "LEARNING_RATE_SCALES", {}).items():
            scales[f"{module_name}.{prefix}" if module_name else prefix] = scale
    groups: dict[float, list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            scale = next((s for prefix, s in scales.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(scale, []).append(parameter)
    optimizer = torch.optim.AdamW([{"params": params, "lr": learning_rate * scale} for scale, params in groups.items()],
                                  lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=max(1, steps_per_epoch // 2),
                              num_training_steps=steps_per_epoch * epochs)
    return optimizer, scheduler


def train_epoch(model, dataloader, collate: PairCollator, optimizer, scheduler, accelerator, state: TrainState, *,
                seed: int, desc: str, checkpointing_steps: int | None = None, stage_dir: Path | None = None) -> float:
    """One epoch (or what is left of it after a resume); returns the mean training loss over all processes."""
    started = time.perf_counter()
    model.train()
    dataloader.set_epoch(state.epoch)
    # Resume mid-epoch: the epoch's shuffled order is reproduced from the seed, and its first batches skipped.
    batches = accelerator.skip_first_batches(dataloader, state.step_in_epoch) if state.step_in_epoch else dataloader
    losses = []
    for batch in tqdm(batches, desc=desc, leave=False, disable=not accelerator.is_local_main_process,
                      initial=state.step_in_epoch, total=len(dataloader)):
        # Dropout, modality dropout and flips draw from a generator seeded by the step, so a resumed run makes
        # the same draws as an uninterrupted one.
        torch.manual_seed(seed * 1_000_003 + state.global_step * 101 + accelerator.process_index)
        with accelerator.accumulate(model):
            output = model(**collate(batch, training=True))
            accelerator.backward(output.loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        losses.append(output.loss.detach().float().item())
        state.step_in_epoch += 1
        if accelerator.sync_gradients:
            state.global_step += 1
            if checkpointing_steps and state.global_step % checkpointing_steps == 0:
                state.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                save_checkpoint(accelerator, stage_dir, state)
    state.train_seconds += time.perf_counter() - started
    mean = torch.tensor([np.mean(losses) if losses else 0.0], device=accelerator.device)
    return float(accelerator.gather(mean).mean())


@torch.no_grad()
def predict(model, dataloader, collate: PairCollator, accelerator, desc: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(N, C) logits (uncalibrated), (N, C) labels and the mean loss over a (sharded) split, gathered across
    processes."""
    model.eval()
    logits, labels, losses = [], [], []
    for batch in tqdm(dataloader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        output = model(**collate(batch, training=False))
        batch_logits, targets = accelerator.gather_for_metrics((output.logits.float(), batch["labels"]))
        loss = accelerator.gather_for_metrics(output.loss.detach().float().repeat(len(batch["labels"])))
        logits.append(batch_logits.cpu())
        labels.append(targets.cpu())
        losses.append(loss.cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), float(torch.cat(losses).mean())


def loss_weights(labels: torch.Tensor, concepts: list[str], single_label: bool) -> list[float]:
    """``--class-weights auto``: weights from the training labels' frequencies. Multi-label: each concept's positives
    weigh (negatives / positives), BCE's ``pos_weight``; single-label: each class weighs N / (C * its examples),
    scikit-learn's "balanced". A concept without training examples keeps 1.0, with a warning.

    Args:
        labels: (N, C) the training rows' targets.
    """
    positives = labels.float().sum(dim=0)  # (C,)
    count, missing = len(labels), [c for c, n in zip(concepts, positives.tolist(), strict=True) if n == 0]
    if missing:
        warnings.warn(f"--class-weights auto: no training example has {', '.join(missing)}; "
                      f"{'it keeps' if len(missing) == 1 else 'they keep'} the weight 1.", stacklevel=2)
    safe = positives.clamp(min=1)
    weights = count / (len(concepts) * safe) if single_label else (count - positives).clamp(min=1) / safe
    return [1.0 if n == 0 else round(float(w), 4) for n, w in zip(positives.tolist(), weights, strict=True)]


# --------------------------------------------------------------------------------------------- results


def summary(metrics: dict) -> dict:
    """The scalar metrics (no per-concept tables)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def tune_and_score(model, val: tuple, test: tuple, val_photos: np.ndarray, concepts: list[str]) -> dict:
    """Calibrate the model's probabilities and tune its thresholds on validation predictions, then score validation
    and test with them.

    The calibration (:func:`~mm_classifier.calibration.fit_calibration`) minimises the validation log loss; the
    thresholds of a multi-label model are then tuned on the calibrated scores, each concept's own pulled toward a
    shared one as far as cross-validation over the validation photos (``val_photos``: each pair's photo, so folds
    never split a photo) says it generalises.

    Args:
        val, test: ``(logits, labels)`` of each split.

    Returns:
        ``validation_*`` and ``test_*`` scalar metrics (with the calibration error before and after), and the
        threshold choice; ``model.config``'s ``calibration_temperatures``, ``calibration_biases`` and ``thresholds``
        are set.
    """
    config = model.config
    (val_logits, val_labels), (test_logits, test_labels) = val, test
    if len(val_photos) != len(val_labels):
        raise RuntimeError(f"{len(val_labels)} validation predictions for {len(val_photos)} pairs")
    uncalibrated = {split: model.probabilities(torch.from_numpy(logits), calibrated=False).numpy()
                    for split, logits in (("validation", val_logits), ("test", test_logits))}
    config.calibration_temperatures, config.calibration_biases = fit_calibration(val_logits, val_labels,
                                                                                 config.single_label)
    val_probs, test_probs = (model.probabilities(torch.from_numpy(z)).numpy() for z in (val_logits, test_logits))
    results = {}
    if config.single_label:
        thresholds = None
    else:
        shrinkage, shrinkage_scores = select_threshold_shrinkage(val_probs, val_labels, groups=val_photos)
        thresholds = config.thresholds = tune_thresholds(val_probs, val_labels, shrinkage=shrinkage)
        results = {
            "threshold_shrinkage": shrinkage if math.isfinite(shrinkage) else "shared",
            # Cross-validated validation micro-F1 of each candidate strength ("inf": one shared threshold).
            "threshold_shrinkage_cv_micro_f1": {
                str(k).removesuffix(".0"): round(v, 4) for k, v in shrinkage_scores.items()
            },
        }
    for split, probs, labels in (("validation", val_probs, val_labels), ("test", test_probs, test_labels)):
        metrics = summary(compute_metrics(probs, labels, thresholds, concepts, single_label=config.single_label))
        metrics["ece"] = expected_calibration_error(probs, labels, config.single_label)
        metrics["ece_uncalibrated"] = expected_calibration_error(uncalibrated[split], labels, config.single_label)
        results.update({f"{split}_{k}": v for k, v in metrics.items()})
    return results


def describe_training(model, photo_input: PhotoInput | None) -> str:
    """What trains and what is frozen or cached, for the stage's first log line."""
    parts = []
    if model.image_encoder is not None:
        blocks, encoder = model.image_encoder.trainable_blocks, model.image_encoder
        parts.append("backbone " + ("frozen" if blocks == 0 else "trainable" if blocks == encoder.num_stages
                                    else f"last {blocks} of {encoder.num_stages} stages trainable "
                                         f"({encoder.stages[-blocks]} on)"))
    if model.text_encoder is not None and "text" not in model.frozen_encoders:
        parts.append(f"{text_encoder_description(model.config)} trainable" if model.config.text_encoder_type != (
            "transformers") else text_encoder_description(model.config) + ", its projection trainable")
    parts += [f"{name} encoder frozen" for name in sorted(model.frozen_encoders)]
    if photo_input in (PhotoInput.FROZEN_FEATURES, PhotoInput.IMAGE_EMBEDS):
        parts.append("cached features")
    return ", ".join(parts)


def save_stage(model, processor, stage_dir: Path, results: dict, history: list[dict], options: dict, dataset: str):
    """The trained model's folder: model and processor, results, the options it was trained with, learning
    curves and model card; the stage's checkpoints, spent now, are removed."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(stage_dir)
    processor.save_pretrained(stage_dir)
    (stage_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (stage_dir / "training_args.json").write_text(json.dumps(options, indent=2, default=str) + "\n")
    plot_learning_curves(history, stage_dir / "learning_curves.png")
    write_model_card(stage_dir, model.config, results, dataset=dataset)
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
