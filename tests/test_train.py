"""End-to-end runs of train.py (slow) and its argument checks."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import TINY_TRAIN_ARGS
from mm_classifier import MultiModalConfig, Predictor, train_options
from mm_classifier.labels import DEFAULT_MIN_VOTES
from mm_classifier.options import default_text
from mm_classifier.sample import built_in_path

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = ("test_micro_f1", "test_macro_f1", "test_mAP", "test_roc_auc")


def test_tiny_run_writes_a_model_whose_predictions_give_its_recorded_results(tiny_model):
    results = json.loads((tiny_model / "all_results.json").read_text())
    predictor = Predictor.from_pretrained(tiny_model)
    assert predictor.model.config.modality == "fusion"
    assert results["test_pairs"] == 35 and results["epochs_run"] == 2 and results["best_epoch"] in (1, 2)
    # The thresholds the results were scored with are the ones saved with the model.
    assert json.loads((tiny_model / "config.json").read_text())["thresholds"] == predictor.model.config.thresholds
    args = json.loads((tiny_model / "training_args.json").read_text())
    assert args["argv"][:2] == ["--dataset", args["dataset"]]  # as given, for benchmarks/fusion_seeds.py


@pytest.mark.slow
def test_three_stage_pipeline_writes_three_models_and_a_report(tiny_folder, tmp_path):
    assert train.main(["--dataset", str(tiny_folder), "--output-dir", str(tmp_path), *TINY_TRAIN_ARGS,
                       "--epochs", "1", "--image-feature-blocks", "-2", "-1", "--image-local-projection",
                       "--trainable-blocks", "0"]) == 0  # frozen: cached feature maps
    for stage in ("image", "text", "fusion"):
        results = json.loads((tmp_path / stage / "all_results.json").read_text())
        # The threshold rule chosen by cross-validation: the candidate with the best score.
        scores = results["threshold_shrinkage_cv_micro_f1"]
        assert set(scores) == {"0", "10", "30", "100", "300", "1000", "inf"}
        chosen = results["threshold_shrinkage"]
        assert scores["inf" if chosen == "shared" else str(int(chosen))] == max(scores.values())
        config = json.loads((tmp_path / stage / "config.json").read_text())
        assert config["image_feature_blocks"] == [-2, -1] and config["image_local_projection"] is True
    report = (tmp_path / "report.md").read_text()
    assert "image model" in report and "text model" in report and "fusion model" in report
    assert "## Training time" in report
    # Training scored the test pairs on cached features of each photo and its mirror image (stored in
    # float16); the report scores them again from pixels, through the prediction API, which averages the two
    # views' embeddings (--mirror-photos, on by default): the same figures.
    scored = json.loads((tmp_path / "metrics.json").read_text())
    by_stage = {"fusion": scored["metrics"], **{name.split()[0]: m for name, m in scored["compare"].items()}}
    for stage in ("image", "fusion"):
        results = json.loads((tmp_path / stage / "all_results.json").read_text())
        assert json.loads((tmp_path / stage / "config.json").read_text())["image_mirror_average"] is True
        assert "mirror image" in (tmp_path / stage / "README.md").read_text()  # the model card says so
        assert by_stage[stage]["mAP"] == pytest.approx(results["test_mAP"], abs=1e-3), stage
        assert by_stage[stage]["micro_f1"] == pytest.approx(results["test_micro_f1"], abs=0.01), stage
    # By default the fusion model keeps the trained single-modality encoders as they are.
    fusion = load_file(tmp_path / "fusion" / "model.safetensors")
    for stage in ("image", "text"):
        single = load_file(tmp_path / stage / "model.safetensors")
        encoder = [k for k in single if k.startswith(f"{stage}_encoder.")]
        assert encoder and all(torch.equal(single[k], fusion[k]) for k in encoder)
    # benchmarks/fusion_seeds.py trains the fusion stage again on the run's image and text models, from the
    # run's own arguments: with the run's seed it gives the same fusion model.
    again = tmp_path / "again"
    subprocess.run([sys.executable, "benchmarks/fusion_seeds.py", str(tmp_path), "--seeds", "0", "--output-dir",
                    str(again)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    retrained = load_file(again / f"{tmp_path.name}-seed0" / "fusion" / "model.safetensors")
    assert retrained.keys() == fusion.keys() and all(torch.equal(retrained[k], fusion[k]) for k in fusion)
    # Arguments after -- override the run's: the same models fused by the gated unit instead.
    subprocess.run([sys.executable, "benchmarks/fusion_seeds.py", str(tmp_path), "--seeds", "0", "--output-dir",
                    str(again), "--", "--fusion-type", "gated"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    gated = again / f"{tmp_path.name}-seed0" / "fusion"
    assert json.loads((gated / "config.json").read_text())["fusion_type"] == "gated"
    assert any(k.startswith("fusion.gate.") for k in load_file(gated / "model.safetensors"))
    assert "gated multimodal unit" in (gated / "README.md").read_text()  # the model card says how it fuses


def test_the_single_label_sample_trains_with_the_default_command_and_predicts_one_class_each(tmp_path, capsys):
    # The default command on the sample's single-label version: detected from its labels, no option says so.
    assert train.main(["--dataset", "sample-grounds", "--output-dir", str(tmp_path), "--epochs", "2",
                       "--max-train-samples", "300"]) == 0
    assert "4 classes (single-label)" in capsys.readouterr().out
    for stage in ("image", "text", "fusion"):
        config = json.loads((tmp_path / stage / "config.json").read_text())
        assert config["problem_type"] == "single_label_classification" and len(set(
            config["calibration_temperatures"])) == 1
        results = json.loads((tmp_path / stage / "all_results.json").read_text())
        assert results["test_accuracy"] == results["test_micro_f1"] and "threshold_shrinkage" not in results
        assert {"test_ece", "test_ece_uncalibrated", "test_top_k_accuracy"} <= set(results)
    predictor = Predictor.from_pretrained(tmp_path / "fusion")
    photos = sorted((built_in_path("sample-grounds").parent / "images").glob("*.png"))[:16]
    for prediction in predictor.predict(photos, "a man with a dog") + predictor.predict(None, ["", "in the snow"]):
        assert prediction.predicted == [max(prediction.probabilities, key=prediction.probabilities.get)]
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(predictor.predict(photos[0], top_k=3)[0].predicted) == 3
    # The report: accuracy first, the baselines on the same pairs, the calibration and a confusion matrix.
    scored = json.loads((tmp_path / "metrics.json").read_text())
    assert scored["problem_type"] == "single_label_classification" and scored["labels"] == "given"
    assert set(scored["baselines"]) == {"TF-IDF logistic regression (baseline)",
                                        "photo-feature logistic regression (baseline)",
                                        "late fusion of the two regressions (baseline)"}
    assert scored["calibration"]["ece"] <= scored["calibration"]["ece_uncalibrated"] + 0.02
    report = (tmp_path / "report.md").read_text()
    assert "| model | accuracy | top-3 acc. |" in report and "Labels are the photos' given labels" in report
    assert re.search(r"Best by accuracy: .*, \d\.\d{3} ahead of", report)
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "reliability.png").is_file()


def write_bad_photo_corpus(folder):
    """A CSV collection of 36 good photos (one ground each) and one of each kind of bad file; returns the file
    names of the bad ones that load, and of those that loading refuses."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    colours = {"grass": (60, 160, 60), "snow": (240, 240, 245), "water": (30, 60, 200)}
    rows = []
    for i in range(36):
        ground = list(colours)[i % 3]
        pixels = np.clip(np.array(colours[ground]) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"good{i:02d}.png")
        rows.append((f"good{i:02d}.png", ground))
    Image.open(folder / "good00.png").save(folder / "whole.jpg", quality=90)
    jpeg = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.jpg").write_text("<html><body>Not found</body></html>")
    png = bytearray((folder / "good00.png").read_bytes())  # a PNG whose header claims 60,000 x 60,000 pixels
    header = png.index(b"IHDR")
    png[header + 4 : header + 12] = struct.pack(">II", 60000, 60000)
    png[header + 17 : header + 21] = struct.pack(">I", zlib.crc32(bytes(png[header : header + 17])))
    (folder / "bomb.png").write_bytes(bytes(png))
    Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(folder / "sixteen_bit.png")
    Image.new("RGB", (9500, 9500), colours["grass"]).save(folder / "ninety_megapixels.jpg", quality=50)
    Image.open(folder / "good01.png").save(folder / "deleted_later.png")
    loads = ["cmyk.jpg", "sixteen_bit.png", "ninety_megapixels.jpg", "deleted_later.png"]
    refused = ["truncated.jpg", "empty.jpg", "page.jpg", "bomb.png"]
    rows += [(name, "grass") for name in loads + refused]
    with open(folder / "data.csv", "w") as f:
        f.write("image,caption,labels\n" + "".join(f"{name},a photo of {ground},{ground}\n" for name, ground in rows))
    return loads, refused


@pytest.mark.slow
def test_bad_files_never_stop_a_run_and_are_counted_by_kind(tmp_path, monkeypatch):
    from mm_classifier import DataWarning, pairs

    loads, refused = write_bad_photo_corpus(tmp_path / "data")
    loaded = pairs.load_photos

    def load_then_delete(*args, **kwargs):  # the file goes after the data set loaded, before its photos are read
        photos = loaded(*args, **kwargs)
        (tmp_path / "data" / "deleted_later.png").unlink(missing_ok=True)
        return photos

    monkeypatch.setattr(pairs, "load_photos", load_then_delete)
    with pytest.warns(DataWarning) as record:
        assert train.main(["--dataset", str(tmp_path / "data" / "data.csv"), "--output-dir", str(tmp_path / "out"),
                           *TINY_TRAIN_ARGS, "--epochs", "1", "--split-seed", "1"]) == 0
    loading = next(str(w.message) for w in record if "skipped" in str(w.message))
    for kind in ("1 truncated or corrupt photo", "1 empty photo file", "1 file that is no image",
                 "1 photo above the pixel limit"):
        assert kind in loading, (kind, loading)
    for stage in ("image", "text", "fusion"):
        assert (tmp_path / "out" / stage / "model.safetensors").is_file()
    results = {s: json.loads((tmp_path / "out" / s / "all_results.json").read_text()) for s in ("image", "fusion")}
    assert [r["unreadable_photos"] for r in results.values()] == [1, 1]  # deleted after loading, left out where met
    assert results["fusion"]["skipped_rows"] == {"truncated or corrupt photo": 1, "empty photo file": 1,
                                                 "file that is no image": 1,
                                                 "photo above the pixel limit (a decompression bomb?)": 1}
    # Nothing good is lost: every good photo, and the odd but valid ones, are in the splits the run used.
    with pytest.warns(DataWarning, match="1 captions for a missing photo"):  # the deleted one, now at loading
        splits = pairs.load_photos(str(tmp_path / "data" / "data.csv"), seed=1)
    used = {name for split in splits.values() for name in split["image_id"]}
    assert {f"good{i:02d}.png" for i in range(36)} | set(loads[:3]) <= used


def run_script(args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# train.py run with its checkpoint saving patched to kill the process right after step KILL_STEP's checkpoint.
KILLED_AFTER_CHECKPOINT = """
import os, runpy, signal, sys
from mm_classifier import training
save = training.save_checkpoint
def save_then_die(accelerator, stage_dir, state, **kwargs):
    save(accelerator, stage_dir, state, **kwargs)
    if state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
training.save_checkpoint = save_then_die
sys.argv = {argv!r}
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(tiny_folder, tmp_path):
    common = ["train.py", "--dataset", str(tiny_folder), "--modality", "fusion", *TINY_TRAIN_ARGS,
              "--epochs", "3", "--checkpointing-steps", "4"]
    reference = run_script([*common, "--output-dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-2000:]
    # Killed with SIGKILL right after the checkpoint at step 18: mid-epoch (14 steps per epoch).
    argv = [*common, "--output-dir", str(tmp_path / "resumed"), "--checkpointing-steps", "9"]
    killed = run_script(["-c", KILLED_AFTER_CHECKPOINT.format(step=18, argv=argv)])
    assert killed.returncode == -9
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = run_script([*common, "--output-dir", str(tmp_path / "resumed"), "--checkpointing-steps", "9",
                          "--resume-from-checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a = load_file(tmp_path / "reference" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("reference", "resumed"))
    assert all(ra[k] == rb[k] for k in RESULT_KEYS)


# train.py run with one function (module, then attribute path) patched to kill the process on its call number N.
KILLED_IN = """
import importlib, os, runpy, signal, sys
*path, name = {attributes!r}
owner = importlib.import_module({module!r})
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), []
def die_on_call_n(*args, **kwargs):
    calls.append(1)
    if len(calls) == {call}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, name, die_on_call_n)
sys.argv = {argv!r}
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize(("module", "attributes", "call", "split_seed"), [
    ("mm_classifier.modeling", ["ImageEncoder", "backbone_features"], 2, 3),  # computing frozen features (1: init)
    ("mm_classifier.data", ["labels_from_votes"], 20, 4),  # a photo's labels, while the pairs are written
])
def test_a_run_killed_while_caching_or_writing_pairs_ends_as_an_uninterrupted_one(
        module, attributes, call, split_seed, tiny_folder, tmp_path):
    # A split seed of its own: nothing is cached yet for this split. A frozen backbone: its features are cached.
    common = ["train.py", "--dataset", str(tiny_folder), "--modality", "fusion", *TINY_TRAIN_ARGS,
              "--trainable-blocks", "0", "--split-seed", str(split_seed)]
    argv = [*common, "--output-dir", str(tmp_path / "killed")]
    killed = run_script(["-c", KILLED_IN.format(module=module, attributes=attributes, call=call, argv=argv)])
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_script([*argv, "--resume-from-checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = run_script([*common, "--output-dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-2000:]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("killed", "reference"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate_launch(tiny_folder, tmp_path):
    result = run_script(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "train.py", "--dataset", str(tiny_folder), "--output-dir", str(tmp_path),
                         "--modality", "text", *TINY_TRAIN_ARGS])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["num_processes"] == 2
    # Metrics are gathered once over the whole split, without the duplicates padding adds.
    assert results["test_pairs"] == 35


@pytest.mark.slow
def test_two_cpu_processes_train_an_image_model_on_chosen_blocks(tiny_folder, tmp_path):
    # Blocks after the chosen ones never run; if they asked for gradients, DDP would fail at the second step.
    result = run_script(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "train.py", "--dataset", str(tiny_folder), "--output-dir", str(tmp_path),
                         "--modality", "image", *TINY_TRAIN_ARGS, "--batch-size", "4",
                         "--image-feature-blocks", "-3", "-2", "--image-local-projection"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "all_results.json").read_text())["num_processes"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "/no/such/folder"], "does not exist"),
        (["--pretrained", "--dataset", "sample"], "HF_HUB_OFFLINE.*--backbone-weights PATH.*--no-pretrained"),
        (["--modality-dropout", "0.6"], r"MultiModalConfig.modality_dropout = 0.6 is invalid.*\[0, 0.5\]"),
        (["--dropout", "1"], r"MultiModalConfig.dropout = 1.0 is invalid"),
        (["--backbone-weights", "/no/weights.safetensors"], "does not exist"),
        (["--push-to-hub", "--hub-model-id", "me/model"], "needs internet"),
    ],
)
def test_bad_arguments_give_clear_errors_before_any_data_loads(argv, message, tmp_path, capsys):
    assert train.main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(f"^error: .*{message}", err), err
    assert not tmp_path.joinpath("image").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--modality", "audio"], "invalid choice: 'audio'"),
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--trainable-blocks", "-1"], "--trainable-blocks: must be at least 0, got -1"),
        (["--fusion-type", "attention"], "invalid choice: 'attention' (choose from 'concat', 'gated')"),
        (["--word-dropout", "0.1"], "unrecognized arguments: --word-dropout"),
    ],
)
def test_malformed_options_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def options_of(parser):
    """Each option of the parser but --help, by its flags."""
    return {tuple(a.option_strings): a for a in parser._actions if a.dest != "help"}


def documented_options() -> dict[tuple[str, ...], str]:
    """docs/training.md's option tables: each row's flags and its default column, as plain text."""
    section = (ROOT / "docs" / "training.md").read_text().split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`--.*?) \| *(.*?) *\| .* \|$", section, re.MULTILINE)
    return {tuple(re.findall(r"`(--[\w-]+)`", flags)): default.replace("`", "") for flags, default in rows}


def test_every_option_has_help_and_the_docs_table_lists_each_with_its_default():
    options = options_of(train.build_parser())
    assert [flags for flags, action in options.items() if not action.help] == []
    documented = documented_options()
    assert sorted(set(options) - set(documented)) == [], "options missing from docs/training.md's table"
    assert sorted(set(documented) - set(options)) == [], "docs/training.md's table lists options train.py lacks"
    wrong = {flags[0]: (default, default_text(options[flags]) or "") for flags, default in documented.items()
             if default != (default_text(options[flags]) or "")}
    assert wrong == {}, "(the docs' default, --help's default)"


# Config fields whose flag train.py resolves itself: which models to train (default: all three), how many tokens a
# caption keeps (default: from the training texts), single- or multi-label (default: from the labels) and the loss's
# class weights (the flag says how to compute them from the labels).
RESOLVED_BY_TRAIN_PY = {"modality", "max_length", "problem_type", "class_weights"}


def test_model_options_default_to_the_config_fields_and_the_sample_to_its_own(tiny_folder, monkeypatch):
    monkeypatch.setattr(train_options, "check_pretrained_download", lambda: None)  # tests are offline
    fields = {f.name: f.default for f in dataclasses.fields(MultiModalConfig)}
    parser = train.build_parser()
    flags = set(vars(parser.parse_args([]))) & set(fields)
    assert flags == RESOLVED_BY_TRAIN_PY | {
        "backbone", "image_size", "image_mean", "image_std", "image_feature_blocks", "image_local_projection",
        "text_trainable_layers", "fusion_type", "dropout", "modality_dropout", "min_votes"}
    real = vars(train.resolve_defaults(parser.parse_args(["--dataset", str(tiny_folder)])))
    sample = vars(train.resolve_defaults(parser.parse_args([])))
    for name in flags - RESOLVED_BY_TRAIN_PY:
        field_default = list(fields[name]) if isinstance(fields[name], tuple) else fields[name]
        assert real[name] == field_default, name
        assert sample[name] == train_options.SAMPLE_DEFAULTS.get(name, field_default), name
    assert (real["pretrained"], real["text_encoder"], real["epochs"]) == (True, train_options.DEFAULT_TEXT_ENCODER,
                                                                           train_options.DEFAULT_EPOCHS)
    assert sample["stage_epochs"] == train_options.SAMPLE_DEFAULTS["epochs"] and sample["pretrained"] is False
    assert sample["text_encoder"] == "auto"  # the lstm for the sample's short captions: see test_text_encoders.py
    # Only the fusion model hides a modality in training (the config's default); the others get 0.
    args = train.resolve_defaults(parser.parse_args([]))
    dropouts = {stage: train.model_config(stage, args, ["dog"], vocab_size=2, pad_token_id=0, max_length=4)
                .modality_dropout for stage in train.STAGES}
    assert dropouts == {"image": 0.0, "text": 0.0, "fusion": fields["modality_dropout"]}
    # The config cannot import labels.py (it carries no training code): the two defaults must agree.
    assert fields["min_votes"] == DEFAULT_MIN_VOTES
