"""What the app and the prediction CLI serve, without gradio or torch: what a model says about itself, one photo's
prediction and explanation as the page shows them, and batches of photos with a captions CSV. Works with either
prediction backend (:class:`~mm_classifier.Predictor`, :class:`~mm_classifier.onnx_runtime.OnnxPredictor`)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import MMClassifierError
from .images import load_image
from .prediction import BasePredictor, Prediction
from .sample import BUILT_IN

MAX_CAPTION_CHARS = 10_000  # longer texts are cut (a product description runs to a few thousand characters)
MAX_BATCH_PHOTOS = 50  # the app's batches; the CLI takes any number
EXPLAIN_MAX_SIDE = 1024  # heat maps are computed at most this large (a photo's own size would be 12 MP)
EXPLAIN_BARS = 8  # concepts in the Explain view's bars: the most probable ones (and the explained one)
EXAMPLES_SHOWN = 6
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
PHOTO_COLUMNS = ("file_name", "image")  # file_name: Hugging Face imagefolder's metadata.csv; image: Kaggle Flickr8k

# ------------------------------------------------------------------------------------------------ the model


@dataclass
class ModelInfo:
    """What the page says about the served model: where it came from and what it was trained on.

    Attributes:
        source: the folder or hub id it was loaded from.
        dataset: the training data as train.py recorded it in training_args.json (``sample``, a folder, a hub
            id), or None if the folder has no record.
        synthetic: trained on the built-in synthetic sample (or a folder the sample's generator wrote).
        test_micro_f1: micro-F1 on the run's own test split, when the run recorded it.
        test_accuracy: a single-label model's accuracy on the run's own test split, when the run recorded it.
    """

    source: str
    dataset: str | None
    synthetic: bool
    test_micro_f1: float | None = None
    test_accuracy: float | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe_model(predictor: BasePredictor, source: str | None = None) -> ModelInfo:
    """The training records a model folder carries: training_args.json and all_results.json."""
    folder = Path(predictor.config.name_or_path or "")
    dataset = _read_json(folder / "training_args.json").get("dataset")
    results = _read_json(folder / "all_results.json")
    # The sample's generator leaves regions.json beside its scenes; real Flickr8k folders have none.
    synthetic = dataset in BUILT_IN or (dataset is not None and (Path(dataset) / "regions.json").is_file())
    return ModelInfo(source or str(folder), dataset, synthetic, results.get("test_micro_f1"),
                     results.get("test_accuracy"))


def text_encoder_description(config) -> str:
    """The caption encoder in a few words, e.g. "pretrained text encoder `all-MiniLM-L6-v2` (frozen)"."""
    if config.text_encoder_type == "transformers":
        name = str(config.text_model_name or config.text_model_config.get("model_type")).rstrip("/").split("/")[-1]
        layers = config.text_trainable_layers
        return f"pretrained text encoder `{name}` ({f'last {layers} layers fine-tuned' if layers else 'frozen'})"
    kind = {"lstm": "word-level BiLSTM", "bag": "bag of words and word bigrams"}[config.text_encoder_type]
    return f"{kind} caption encoder ({config.vocab_size}-word vocabulary)"


def model_description(predictor: BasePredictor, info: ModelInfo) -> str:
    """One paragraph of Markdown: the model, what it reads, what it was trained on."""
    config = predictor.config
    reads = {"image": "a photo", "text": "a caption", "fusion": "a photo, a caption, or both"}[config.modality]
    parts = [f"**Served model:** `{info.source}`, {config.modality} (reads {reads})"]
    if config.uses_image:
        parts.append(f"backbone `{config.backbone}` at {config.image_size} px")
    if config.uses_text:
        parts.append(text_encoder_description(config))
    trained = f"`{info.dataset}`" if info.dataset else "unrecorded data (no training_args.json)"
    if info.dataset in BUILT_IN:
        trained = "the built-in synthetic sample" + ("" if info.dataset == "sample" else f" (`{info.dataset}`)")
    text = ", ".join(parts) + f"; trained on {trained}"
    if config.single_label and info.test_accuracy is not None:
        text += f" (accuracy {info.test_accuracy:.2f} on its own test split)"
    elif not config.single_label and info.test_micro_f1 is not None:
        text += f" (micro-F1 {info.test_micro_f1:.2f} on its own test split)"
    if config.single_label:
        return text + (f". Single-label: it predicts exactly one of its {config.num_labels} classes, the most "
                       f"probable one: {', '.join(config.concepts)}.")
    return text + (f". Multi-label: it finds any number of its {config.num_labels} concepts, each at or above its own "
                   f"threshold: {', '.join(config.concepts)}.")


def sample_note(predictor: BasePredictor, info: ModelInfo) -> str | None:
    """The warning a model trained on synthetic scenes carries; None for any other model."""
    if not info.synthetic:
        return None
    config = predictor.config
    seen = [f"{config.image_size}-px cartoon scenes"] if config.uses_image else []
    if config.uses_text:
        seen.append("captions of its few words")
    return (
        f"⚠️ **This is a demo model trained on synthetic scenes** ({' with '.join(seen)}). It knows only those "
        "scenes: on a real photo it still answers, confidently and wrongly. For a model of real photos, download "
        "Flickr8k and train on it: `python train.py --dataset PATH/TO/flickr8k`, then "
        "`python app.py --model outputs/fusion` (docs/data.md)."
    )


# ------------------------------------------------------------------------------------------------ one photo


def clean_caption(caption: str | None) -> str | None:
    """A caption as the model reads it: stripped, cut at MAX_CAPTION_CHARS; None when blank."""
    return (caption or "").strip()[:MAX_CAPTION_CHARS] or None


def _check_inputs(predictor: BasePredictor, has_photo: bool, has_caption: bool) -> None:
    config = predictor.config
    if not has_photo and not has_caption:
        raise MMClassifierError("Upload a photo or type a caption (or both).")
    if not has_photo and not config.uses_text:
        raise MMClassifierError("This model reads photos only: upload a photo.")
    if not has_caption and not config.uses_image:
        raise MMClassifierError("This model reads captions only: type a caption.")


def thresholds(predictor: BasePredictor, threshold: float | None) -> dict[str, float | None]:
    """Each concept's cut-off: ``threshold`` for all, else the tuned ones; None each for a single-label model, which
    takes its most probable class."""
    cutoffs = predictor._thresholds(threshold or None)
    return dict(zip(predictor.concepts, cutoffs or [None] * len(predictor.concepts), strict=True))


def predict(predictor: BasePredictor, photo=None, caption: str | None = None, threshold: float | None = None,
            top_k: int | None = None) -> Prediction:
    """Every concept's probability for a photo (path, PIL or numpy) and/or a caption; the app's pure core.

    Raises:
        MMClassifierError: nothing given, the photo cannot be read, or a threshold for a single-label model.
    """
    caption = clean_caption(caption)
    _check_inputs(predictor, photo is not None, caption is not None)
    return predictor.predict(photo, caption, thresholds=threshold, top_k=top_k)[0]


def concept_view(predictor: BasePredictor, prediction: Prediction, threshold: float | None = None) -> dict:
    """The result as the page draws it and the API returns it: the found concepts (a single-label model's one
    class), and every concept's probability and threshold (None for a single-label model), most probable first."""
    cutoffs = thresholds(predictor, threshold)
    ranked = sorted(prediction.probabilities, key=prediction.probabilities.get, reverse=True)
    return {
        "single_label": predictor.config.single_label,
        "predicted": list(prediction.predicted),
        "concepts": [{"concept": c, "probability": prediction.probabilities[c], "threshold": cutoffs[c],
                      "predicted": c in prediction.predicted} for c in ranked],
    }


def summary(prediction: Prediction, single_label: bool = False) -> str:
    """One line: "Found: dog (91%), grass (55%)." or "No concept above its threshold."; for a single-label model
    "Most probable class: snow (91%)."."""
    found = ", ".join(f"{c} ({prediction.probabilities[c]:.0%})" for c in prediction.predicted)
    if single_label:
        return f"Most probable class: {found}."
    return f"Found: {found}." if found else "No concept above its threshold."


@dataclass
class AppExplanation:
    """What the Explain view shows.

    Attributes:
        concept: the explained concept.
        prediction: the prediction from everything the model read.
        bars: each concept's probability from photo + caption, the photo alone and the caption alone (None
            where that input was not given or the model does not read it), and its threshold (None for a
            single-label model), most probable first.
        heatmap: (h, w) in [0, 1], where the photo shows the concept; None without a photo.
        image: the photo (for showing: at most EXPLAIN_MAX_SIDE pixels on its longer side), or None.
        words: (word, contribution) per caption word: how much hiding the word lowers the concept's probability.
    """

    concept: str
    prediction: Prediction
    bars: dict
    heatmap: object | None
    image: object | None
    words: list[tuple[str, float]]


def explain(predictor: BasePredictor, photo=None, caption: str | None = None, concept: str | None = None,
            threshold: float | None = None) -> AppExplanation:
    """Explain one concept (default: the most probable one) for a photo and/or a caption, from one
    :meth:`~mm_classifier.Predictor.explain` result: its probabilities are what Predict shows.

    Raises:
        MMClassifierError: nothing given, an unreadable photo, an unknown concept, or the ONNX backend (which has
            no gradients to explain with).
    """
    caption = clean_caption(caption)
    _check_inputs(predictor, photo is not None, caption is not None)
    config = predictor.config
    if concept is not None and concept not in predictor.concepts:
        raise MMClassifierError(f"Unknown concept {concept!r}: the model knows {', '.join(predictor.concepts)}.")
    cutoffs = thresholds(predictor, threshold)  # a threshold for a single-label model fails here, before any work
    image = load_image(photo) if photo is not None and config.uses_image else None
    caption = caption if config.uses_text else None
    explanation = predictor.explain(image, caption, concepts=concept, max_heatmap_side=EXPLAIN_MAX_SIDE)
    explained = explanation.concepts[0]  # the asked one, or the most probable
    probabilities = explanation.probabilities
    ranked = sorted(probabilities, key=probabilities.get, reverse=True)
    predicted = ranked[:1] if config.single_label else [c for c in ranked if probabilities[c] >= cutoffs[c]]
    prediction = Prediction(probabilities, predicted)
    shown = ranked[:EXPLAIN_BARS] + ([explained.concept] if explained.concept not in ranked[:EXPLAIN_BARS] else [])

    def probability(row, name):
        return None if row is None else row[name]

    bars = {
        "explained": explained.concept,
        "concepts": [{"concept": c, "both": probability(explanation.both, c),
                      "photo_only": probability(explanation.photo_only, c),
                      "caption_only": probability(explanation.caption_only, c), "threshold": cutoffs[c]}
                     for c in shown],
    }
    if image is not None and max(image.size) > EXPLAIN_MAX_SIDE:
        image = image.copy()
        image.thumbnail((EXPLAIN_MAX_SIDE, EXPLAIN_MAX_SIDE))
    return AppExplanation(explained.concept, prediction, bars, explained.heatmap, image, list(explained.words))


def highlighted_words(words: list[tuple[str, float]]) -> list[tuple[str, float | None]]:
    """gr.HighlightedText's value: each word with its contribution scaled to [-1, 1] (the strongest word at
    ±1), spaces between them."""
    strongest = max((abs(value) for _, value in words), default=0.0) or 1.0
    shown: list[tuple[str, float | None]] = []
    for word, value in words:
        shown += [(word, value / strongest), (" ", None)]
    return shown[:-1]


def upload_problem(path) -> str | None:
    """Why an uploaded file cannot be used as a photo, or None when it can (checked on upload, before Predict)."""
    if path is None:
        return None
    try:
        load_image(path)
    except MMClassifierError as err:
        return str(err).replace(str(path), "The uploaded file")
    return None


# ------------------------------------------------------------------------------------------------ many photos


def read_captions_csv(path: str | os.PathLike) -> dict[str, str]:
    """Photo file name -> caption from a CSV with a header: ``file_name,caption`` (``image,caption`` also works,
    so Kaggle Flickr8k's captions.txt can be given; a photo listed twice keeps its first caption).

    Raises:
        MMClassifierError: the file cannot be read or has no such columns.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            photo_column = next((name for name in PHOTO_COLUMNS if name in columns), None)
            if photo_column is None or "caption" not in columns:
                raise MMClassifierError(
                    f"{path} needs a header line with the columns file_name,caption (found: "
                    f"{','.join(columns) or 'nothing'})."
                )
            reader.fieldnames = columns
            captions: dict[str, str] = {}
            for row in reader:
                name = (row.get(photo_column) or "").strip()
                if name:
                    captions.setdefault(name, (row.get("caption") or "").strip())
            return captions
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MMClassifierError(f"Cannot read the captions file {path}: {err}") from err


def caption_for(photo: str | os.PathLike, captions: dict[str, str], default: str | None = None) -> str | None:
    """The caption a captions CSV gives a photo (matched by file name, or by the path as listed), else default."""
    photo = str(photo)
    for key in (photo, Path(photo).name):
        if captions.get(key):
            return captions[key]
    return default


@dataclass
class BatchRow:
    """One photo of a batch: its prediction, or why there is none."""

    photo: str  # the file name, as shown
    caption: str | None
    prediction: Prediction | None = None
    error: str | None = None
    path: str = ""  # the file


@dataclass
class BatchResult:
    rows: list[BatchRow]
    unmatched: list[str]  # names the captions CSV lists that were not among the photos


def predict_batch(predictor: BasePredictor, photos: list, caption: str | None = None, captions_csv=None,
                  threshold: float | None = None, top_k: int | None = None,
                  limit: int | None = MAX_BATCH_PHOTOS) -> BatchResult:
    """Predict several photos; each takes its caption from ``captions_csv`` (file_name,caption; matched by file
    name), else ``caption``. A photo that cannot be read gets an error in its row; the others are answered.

    Args:
        photos: photo files; with a captions CSV and no photos, the photos it lists, from its folder.
        limit: at most this many photos (None: any number).

    Raises:
        MMClassifierError: no photos, too many, or an unreadable captions file.
    """
    captions = read_captions_csv(captions_csv) if captions_csv else {}
    photos = [str(p) for p in photos or []] or [str(Path(captions_csv).parent / name) for name in captions]
    if not photos:
        raise MMClassifierError("Upload one or more photos.")
    if limit is not None and len(photos) > limit:
        raise MMClassifierError(f"{len(photos)} photos: at most {limit} at a time.")
    default = clean_caption(caption)
    rows = []
    for path in photos:
        name = Path(path).name
        row = BatchRow(name, clean_caption(caption_for(path, captions, default)), path=path)
        try:
            row.prediction = predict(predictor, path, row.caption, threshold, top_k)
        except MMClassifierError as err:
            row.error = str(err).replace(path, name)
        rows.append(row)
    names = {Path(p).name for p in photos}
    return BatchResult(rows, [n for n in captions if Path(n).name not in names])


def batch_table(result: BatchResult) -> list[list[str]]:
    """The rows of the app's batch table: photo, caption, the concepts found (or the error)."""
    def found(row: BatchRow) -> str:
        if row.prediction is None:
            return f"⚠ {row.error}"
        return ", ".join(f"{c} ({row.prediction.probabilities[c]:.0%})" for c in row.prediction.predicted) or "(none)"

    return [[row.photo, row.caption or "", found(row)] for row in result.rows]


def write_batch_files(result: BatchResult, concepts: list[str], folder: Path) -> tuple[Path, Path]:
    """predictions.csv (one column per concept's probability) and predictions.json in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "predictions.csv", folder / "predictions.json"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "caption", "predicted", "error", *concepts])
        for row in result.rows:
            probabilities = row.prediction.probabilities if row.prediction else {}
            writer.writerow([row.photo, row.caption or "", ";".join(row.prediction.predicted if row.prediction else []),
                             row.error or "", *[f"{probabilities[c]:.6f}" if probabilities else "" for c in concepts]])
    records = [{"photo": row.photo, "caption": row.caption, "error": row.error,
                "predicted": row.prediction.predicted if row.prediction else None,
                "probabilities": row.prediction.probabilities if row.prediction else None} for row in result.rows]
    json_path.write_text(json.dumps(records, indent=2) + "\n")
    return csv_path, json_path


# ------------------------------------------------------------------------------------------------ examples


def folder_examples(folder: str | os.PathLike, count: int = EXAMPLES_SHOWN) -> list[list]:
    """The photos of a folder, each with its caption from the folder's captions.csv (file_name,caption) if any.

    Raises:
        MMClassifierError: no such folder, or no photos in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MMClassifierError(f"--examples {folder}: no such folder.")
    captions = read_captions_csv(folder / "captions.csv") if (folder / "captions.csv").is_file() else {}
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise MMClassifierError(f"--examples {folder}: no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) in it.")
    return [[str(p), caption_for(p, captions, "")] for p in photos[:count]]


def sample_examples(count: int = EXAMPLES_SHOWN) -> list[list]:
    """Photos and captions of the built-in sample's test split (scenes a sample model never trained on); needs the
    training dependencies (datasets)."""
    import contextlib
    import io

    from .data import load_flickr8k

    # Loading the sample shows a "Checking photos" bar that datasets.disable_progress_bars() does not reach; a
    # second or two at start is no wait worth a bar in the server's log.
    with contextlib.redirect_stderr(io.StringIO()):
        test = load_flickr8k("sample")["test"]
    undecoded = test.cast_column("image", test.features["image"].__class__(decode=False))
    rows = undecoded.select(range(min(count, len(test))))
    return [[row["image"]["path"], row["captions"][0]] for row in rows]
