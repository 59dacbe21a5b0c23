import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import TINY_TRAIN_ARGS

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = ("test_micro_f1", "test_macro_f1", "test_mAP", "test_roc_auc")


def test_tiny_run_writes_a_loadable_model_with_results(tiny_model):
    from mm_classifier import Predictor

    results = json.loads((tiny_model / "all_results.json").read_text())
    assert all(0 <= results[k] <= 1 for k in RESULT_KEYS)
    assert Predictor.from_pretrained(tiny_model).model.config.modality == "fusion"
    assert "## Intended use and limits" in (tiny_model / "README.md").read_text()


def test_three_stage_pipeline_writes_three_models_and_a_report(tiny_folder, tmp_path):
    assert train.main(["--dataset", str(tiny_folder), "--output-dir", str(tmp_path), *TINY_TRAIN_ARGS,
                       "--epochs", "1", "--image-feature-blocks", "-2", "-1", "--image-local-projection",
                       "--trainable-blocks", "0", "--fusion-dropout", "0.4"]) == 0  # frozen: cached feature maps
    for stage in ("image", "text", "fusion"):
        results = json.loads((tmp_path / stage / "all_results.json").read_text())
        assert all(k in results for k in RESULT_KEYS)
        # The threshold rule chosen by cross-validation, with the score of every candidate.
        assert set(results["threshold_shrinkage_cv_micro_f1"]) == {"0", "10", "30", "100", "300", "1000", "inf"}
        assert results["threshold_shrinkage"] == "shared" or results["threshold_shrinkage"] >= 0
        config = json.loads((tmp_path / stage / "config.json").read_text())
        assert config["image_feature_blocks"] == [-2, -1] and config["image_local_projection"] is True
        assert config["dropout"] == (0.4 if stage == "fusion" else 0.3)  # --fusion-dropout: that stage only
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
    # Arguments after -- override the run's.
    subprocess.run([sys.executable, "benchmarks/fusion_seeds.py", str(tmp_path), "--seeds", "0", "--output-dir",
                    str(again), "--", "--fusion-dropout", "0.2"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    config = json.loads((again / f"{tmp_path.name}-seed0" / "fusion" / "config.json").read_text())
    assert config["dropout"] == 0.2


def run_script(args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_resume_after_sigkill_gives_identical_weights(tiny_folder, tmp_path):
    common = ["train.py", "--dataset", str(tiny_folder), "--modality", "fusion", *TINY_TRAIN_ARGS,
              "--epochs", "3", "--checkpointing-steps", "4"]
    reference = run_script([*common, "--output-dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-2000:]
    # Killed with SIGKILL right after the checkpoint at step 18: mid-epoch (14 steps per epoch).
    killed = run_script([*common, "--output-dir", str(tmp_path / "resumed"), "--checkpointing-steps", "9",
                         "--kill-after-checkpoint", "18"])
    assert killed.returncode == -9
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = run_script([*common, "--output-dir", str(tmp_path / "resumed"), "--checkpointing-steps", "9",
                          "--resume-from-checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a, b = load_file(tmp_path / "reference" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("reference", "resumed"))
    assert all(ra[k] == rb[k] for k in RESULT_KEYS)


def test_two_cpu_processes_with_accelerate_launch(tiny_folder, tmp_path):
    result = run_script(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "train.py", "--dataset", str(tiny_folder), "--output-dir", str(tmp_path),
                         "--modality", "text", *TINY_TRAIN_ARGS, "--soft-targets"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["num_processes"] == 2
    # Metrics are gathered once over the whole split, without the duplicates padding adds.
    assert results["test_pairs"] == 35


def test_two_cpu_processes_train_an_image_model_on_chosen_stages(tiny_folder, tmp_path):
    # Stages after the chosen ones never run; if they asked for gradients, DDP would fail at the second step.
    result = run_script(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "train.py", "--dataset", str(tiny_folder), "--output-dir", str(tmp_path),
                         "--modality", "image", *TINY_TRAIN_ARGS, "--batch-size", "4", "--image-feature-blocks", "-3", "-2",
                         "--image-local-projection"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "all_results.json").read_text())["num_processes"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--modality", "audio"], None),
        (["--dataset", "/no/such/folder"], "does not exist"),
        (["--pretrained", "--dataset", "sample"], "HF_HUB_OFFLINE.*--backbone-weights PATH.*--no-pretrained"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--fusion-dropout", "1"], r"--fusion-dropout must be in \[0, 1\), got 1.0"),
        (["--modality-dropout", "0.6"], r"--modality-dropout must be in \[0, 0.5\]"),
        (["--word-dropout", "-0.1"], r"--word-dropout must be in \[0, 1\), got -0.1"),
        (["--backbone-weights", "/no/weights.safetensors"], "does not exist"),
        (["--push-to-hub", "--hub-model-id", "me/model"], "needs internet"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message, tmp_path, capsys):
    if message is None:
        with pytest.raises(SystemExit):
            train.main([*argv, "--output-dir", str(tmp_path)])
        assert "invalid choice: 'audio'" in capsys.readouterr().err
        return
    assert train.main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    import re

    assert re.search(message, err), err


def test_withheld_test_photos_make_dev_the_test_split_and_hold_out_training_photos_by_photo():
    import datasets
    from accelerate import Accelerator

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
    new_photos, new_pairs = train.hold_out_validation(photos, pairs, seed=0, accelerator=Accelerator(cpu=True))
    assert len(new_photos["validation"]) == 2 and len(new_photos["train"]) == 12
    assert new_photos["test"]["image_id"] == ["d0", "d1"]
    for split in ("train", "validation", "test"):
        assert set(new_pairs[split]["image_id"]) == set(new_photos[split]["image_id"])
        assert len(new_pairs[split]) == 5 * len(new_photos[split])
    assert not set(new_photos["train"]["image_id"]) & set(new_photos["validation"]["image_id"])


def test_split_seed_keeps_the_split_while_seed_changes_only_training(tiny_folder):
    from accelerate import Accelerator

    def photos_per_split(*argv):
        args = train.resolve_defaults(train.build_parser().parse_args(["--dataset", str(tiny_folder), *TINY_TRAIN_ARGS, *argv]))
        data = train.prepare_data(args, Accelerator(cpu=True))
        return {split: sorted(part["photos"]["image_id"]) for split, part in data["splits"].items()}

    assert photos_per_split("--seed", "1", "--split-seed", "0") == photos_per_split("--seed", "0")
    assert photos_per_split("--seed", "1") != photos_per_split("--seed", "0")


def test_word_dropout_hides_caption_words_behind_unk_in_training_only():
    from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor, build_tokenizer

    tokenizer = build_tokenizer(["a dog runs on the grass", "a child in the snow"], min_frequency=1)
    processor = MultiModalProcessor(tokenizer)
    encoded = processor.tokenize(["a dog runs on the grass", "a child in the snow", ""])
    batch = {"labels": torch.zeros(3, 2), "targets": torch.zeros(3, 2), "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    config = MultiModalConfig(modality="text", vocab_size=len(tokenizer), id2label={0: "dog", 1: "snow"})
    model = MultiModalClassifier(config)
    unk = tokenizer.unk_token_id

    def ids(training, word_dropout, seed=0):
        torch.manual_seed(seed)
        return train.batch_inputs(batch, model, {}, processor, None, training, word_dropout)["input_ids"]

    words = encoded["attention_mask"].bool()
    assert torch.equal(ids(True, 0.0), encoded["input_ids"])
    assert torch.equal(ids(False, 0.9), encoded["input_ids"])  # evaluation never hides words
    hidden = ids(True, 0.5) != encoded["input_ids"]
    assert hidden.any() and not hidden[~words].any()  # only real words, never padding
    assert (ids(True, 0.5)[hidden] == unk).all()
    assert (ids(True, 0.999)[words] == unk).all() and (ids(True, 0.999)[~words] == tokenizer.pad_token_id).all()


def test_soft_targets_are_shares_of_the_other_captions_while_metrics_keep_the_labels(tiny_folder):
    from accelerate import Accelerator

    def data(*argv):
        args = train.resolve_defaults(train.build_parser().parse_args(["--dataset", str(tiny_folder), *TINY_TRAIN_ARGS, *argv]))
        return train.prepare_data(args, Accelerator(cpu=True))

    hard, soft = data(), data("--soft-targets")
    for split in ("train", "validation", "test"):
        h, s = hard["splits"][split]["pairs"], soft["splits"][split]["pairs"]
        assert torch.equal(h.labels, s.labels) and torch.equal(h.targets, h.labels)
        # Five captions a photo: each pair's share is 0, 1/4, ... 1 and its label (2 of the other 4) is share >= 1/2.
        assert set(s.targets.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
        assert torch.equal((s.targets >= 0.5).float(), s.labels)
        assert ((s.targets > 0) & (s.targets < 1)).any()
    # The image-only model trains on one row per photo: the mean of its pairs' targets, and of its labels.
    pairs = soft["splits"]["train"]["pairs"]
    photos = train.photo_rows(pairs, len(soft["splits"]["train"]["photos"]))
    first = pairs.photo_index == photos.photo_index[0]
    assert torch.allclose(photos.targets[0], pairs.targets[first].mean(0))
    assert torch.allclose(photos.labels[0], pairs.labels[first].mean(0))
    # The loss fits the targets; predict_rows scores the labels.
    from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor

    config = MultiModalConfig(modality="text", vocab_size=len(soft["tokenizer"]), id2label=dict(enumerate(soft["concepts"])))
    batch = torch.utils.data.default_collate([pairs[i] for i in range(4)])
    inputs = train.batch_inputs(batch, MultiModalClassifier(config), {}, MultiModalProcessor(soft["tokenizer"]), None, True)
    assert torch.equal(inputs["labels"], pairs.targets[:4])
