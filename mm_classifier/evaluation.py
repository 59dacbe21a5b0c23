"""Evaluate a saved model on a split: pair scores -> metrics, modality ablations, comparisons, report files.

    python -m mm_classifier.evaluation --model outputs/fusion --dataset sample --output-dir reports/fusion
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import DataSource, add_source_arguments, load_photos, source_from_args, to_pairs
from .errors import MMClassifierError
from .metrics import compute_metrics
from .pairs import multi_hot
from .predict import Predictor
from .reporting import format_metric, training_time_section, write_figures, write_report

# isort: split
# re-exported for train.py until it imports the new modules
from .modelcard import write_model_card  # noqa: F401
from .thresholds import select_threshold_shrinkage, tune_thresholds  # noqa: F401

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "evaluate_model", "main", "pairs_for_model", "score_pairs", "write_pipeline_report"]


# --------------------------------------------------------------------------------------------- scoring


@torch.inference_mode()
def score_pairs(predictor: Predictor, pairs, batch_size: int = 64, desc: str = "") -> dict[str, np.ndarray]:
    """Probabilities of a model for (photo, caption) pair rows; each photo is encoded once.

    Returns:
        ``{"both": (N, C)}`` for a single-modality model; a fusion model adds ``"image_only"`` (caption removed)
        and ``"text_only"`` (photo removed).
    """
    model, processor, device = predictor.model, predictor.processor, predictor.device
    config = model.config
    image_embeds = text_embeds = None
    if config.uses_image:
        pair_photo_ids = list(pairs["image_id"])
        photo_ids = list(dict.fromkeys(pair_photo_ids))
        first_row = {}
        for row, image_id in enumerate(pair_photo_ids):
            first_row.setdefault(image_id, row)
        undecoded = pairs.cast_column("image", pairs.features["image"].__class__(decode=False))
        chunks = []
        for start in tqdm(range(0, len(photo_ids), batch_size), desc=f"{desc} photos".strip(), leave=False):
            rows = [first_row[i] for i in photo_ids[start : start + batch_size]]
            images = list(undecoded.select(rows)["image"])
            pixels = processor(images=images)["pixel_values"].to(device).contiguous(memory_format=torch.channels_last)
            chunks.append(model.encode_image(pixels))
        per_photo = torch.cat(chunks)  # (P, Di)
        position = {image_id: i for i, image_id in enumerate(photo_ids)}
        image_embeds = per_photo[torch.tensor([position[i] for i in pair_photo_ids])]  # (N, Di)
    if config.uses_text:
        captions = list(pairs["caption"])
        chunks = []
        for start in tqdm(range(0, len(captions), 256), desc=f"{desc} captions".strip(), leave=False):
            tokens = processor.tokenize(captions[start : start + 256])
            chunks.append(model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)))
        text_embeds = torch.cat(chunks)  # (N, Dt)

    def probabilities(image, text):
        return torch.sigmoid(model.classify(image, text).float()).cpu().numpy()

    scores = {"both": probabilities(image_embeds, text_embeds)}
    if config.modality == "fusion":
        scores["image_only"] = probabilities(image_embeds, None)
        scores["text_only"] = probabilities(None, text_embeds)
    return scores


def pairs_for_model(config, dataset: str | DataSource, split: str, seed: int = 0):
    """The split's pairs, labelled with the model's own concepts and labelling rule: the photos' given labels when the
    data set has them (labels outside the model's concepts dropped and reported), else mined from the captions.

    Args:
        dataset: a data set name or path, or a :class:`~mm_classifier.data.DataSource` with the options to read it.
    """
    photos = load_photos(dataset, seed=seed)
    if split not in photos:
        raise MMClassifierError(f"Unknown split {split!r}; choose from {list(photos)}.")
    lexicon = config.concept_words or {c: [c] for c in config.concepts}
    return to_pairs(photos[split], config.concepts, min_votes=config.min_votes, lexicon=lexicon)


# --------------------------------------------------------------------------------------------- evaluation


def evaluate_model(
    model_dir: str | Path,
    dataset: str,
    split: str = "test",
    output_dir: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    seed: int = 0,
    num_examples: int = 12,
    title: str | None = None,
) -> dict:
    """Evaluate a model (and optional comparison models) on a split and write the report files.

    Writes ``metrics.json``, ``report.md``, ``roc_curves.png``, ``pr_curves.png`` and ``examples.png`` into
    ``output_dir`` (default: ``model_dir/eval_<split>``). Returns the content of ``metrics.json``.
    """
    predictor = Predictor.from_pretrained(model_dir)
    config = predictor.model.config
    output_dir = Path(output_dir) if output_dir is not None else Path(model_dir) / f"eval_{split}"
    output_dir.mkdir(parents=True, exist_ok=True)
    pairs = pairs_for_model(config, dataset, split, seed)
    if len(pairs) == 0:
        raise MMClassifierError(f"The {split} split of {dataset} has no pairs to evaluate.")
    targets = multi_hot(list(pairs["labels"]), config.num_labels)
    scores = score_pairs(predictor, pairs, desc=Path(model_dir).name)
    concepts = config.concepts
    thresholds = config.thresholds
    main = compute_metrics(scores["both"], targets, thresholds, concepts)
    rows = {f"{config.modality} model ({Path(model_dir).name})": main}
    ablation = {}
    if config.modality == "fusion":
        ablation["caption removed (photo only)"] = compute_metrics(scores["image_only"], targets, thresholds, concepts)
        ablation["photo removed (caption only)"] = compute_metrics(scores["text_only"], targets, thresholds, concepts)
    compared = {}
    for other_dir in compare:
        other = Predictor.from_pretrained(other_dir)
        if other.concepts != concepts:
            raise MMClassifierError(f"{other_dir} predicts other concepts than {model_dir}; they cannot be compared.")
        other_scores = score_pairs(other, pairs, desc=Path(other_dir).name)["both"]
        name = f"{other.model.config.modality} model ({Path(other_dir).name})"
        compared[name] = compute_metrics(other_scores, targets, other.model.config.thresholds, concepts)

    write_figures(output_dir, pairs, scores["both"], targets, thresholds, concepts, num_examples)
    result = {
        "model": str(model_dir), "dataset": str(dataset), "split": split, "num_pairs": len(pairs),
        "num_photos": len(set(pairs["image_id"])), "metrics": main,
        "ablation": ablation, "compare": compared,
    }
    write_report(output_dir, result, {**compared, **rows, **ablation}, title=title)
    return result


def write_pipeline_report(
    output_dir: Path, stage_dirs: dict[str, Path], dataset: str, seed: int = 0, split: str = "test"
) -> Path:
    """``outputs/report.md``: the fusion model, its ablations and the image-only and text-only models, side by side.

    Args:
        output_dir: where the report and its figures go.
        stage_dirs: stage name (``"fusion"``, ``"image"``, ``"text"``) -> its model folder. The fusion model (else
            the first of the others) is the main model; the others are compared with it.
        dataset, seed, split: the data, as for :func:`evaluate_model`.

    Returns:
        The path of ``report.md``, which ends with each stage's training time.
    """
    fusion = stage_dirs.get("fusion")
    others = [stage_dirs[s] for s in ("image", "text") if s in stage_dirs]
    if fusion is None:
        main, others = others[0], others[1:]
    else:
        main = fusion
    evaluate_model(
        main, dataset, split, output_dir, compare=others, seed=seed,
        title="Image-only, text-only and fusion models compared",
    )
    with open(Path(output_dir) / "report.md", "a") as f:
        f.write(training_time_section(stage_dirs))
    return Path(output_dir) / "report.md"


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mm_classifier.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/fusion) or hub id")
    parser.add_argument("--dataset", default="sample", help="folder, file, hub id or 'sample' (default: %(default)s)")
    add_source_arguments(parser)  # --image-column, --caption-column, --label-column, --image-dir
    parser.add_argument("--split", default="test", help="train, validation or test (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, help="where to write the report (default: MODEL/eval_SPLIT)")
    parser.add_argument("--compare", nargs="*", default=[], help="other model folders to evaluate on the same pairs")
    parser.add_argument("--seed", type=int, default=0,
                        help="split seed, as given to train.py (its --split-seed, else its --seed)")
    parser.add_argument("--num-examples", type=int, default=12, help="photos in examples.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_model(
            args.model, source_from_args(args), args.split, args.output_dir, args.compare, args.seed, args.num_examples
        )
    except MMClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = result["metrics"]
    output_dir = args.output_dir or Path(args.model) / f"eval_{args.split}"
    print(f"micro-F1 {format_metric(m['micro_f1'])}, macro-F1 {format_metric(m['macro_f1'])}, "
          f"mAP {format_metric(m['mAP'])}, ROC-AUC {format_metric(m['roc_auc'])} on {result['num_pairs']} pairs "
          f"-> {output_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
