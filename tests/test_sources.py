"""Your own data: one small collection written in every layout loads to the same photo rows, pairs and labels."""

import contextlib
import csv
import hashlib
import io
import json
import warnings

import datasets
import numpy as np
import pytest
from PIL import Image

from mm_classifier import DataWarning, MMClassifierError, to_pairs
from mm_classifier.data import DataSource, load_photos
from mm_classifier.data import main as data_main

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
WORDS = ["dog", "man", "woman", "ball", "grass", "beach", "water", "snow"]


def collection(n=24, labelled=False):
    """name -> (colour, captions, labels, own split): captions name a few concepts, so mining finds some."""
    photos = {}
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 3 + 1) % len(WORDS)]
        captions = [f"a {a} near the {b}", f"the {a} and a {b}", f"one {a}", f"a picture number {i}"]
        labels = [COLOURS[i % 3], COLOURS[3 + i % 2]][: 1 + i % 2] if labelled else None
        split = "train" if i % 6 < 4 else "validation" if i % 6 == 4 else "test"
        photos[f"p{i:02d}.png"] = (COLOURS[i % len(COLOURS)], captions, labels, split)
    return photos


def save_photo(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)


def photo_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ writers, one a layout


def write_kaggle(folder, photos):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name, (colour, captions, _, _) in photos.items():
            save_photo(folder / "images" / name, colour)
            writer.writerows([name, caption] for caption in captions)


def write_karpathy(folder, photos, own_split=True):
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for name, (colour, captions, _, split) in photos.items():
        save_photo(folder / "Images" / name, colour)
        images.append({"filename": name, "split": {"validation": "val"}.get(split, split) if own_split else "train",
                       "sentences": [{"raw": c, "tokens": c.split()} for c in captions]})
    (folder / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}, indent=1))


def write_coco(folder, photos, splits=("train",)):
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        images, notes = [], []
        for i, (name, (colour, captions, _, own)) in enumerate(photos.items()):
            if len(splits) > 1 and {"validation": "val"}.get(own, own) != split:
                continue
            save_photo(folder / f"{split}2017" / name, colour)
            images.append({"id": 1000 + i, "file_name": name, "height": 10, "width": 12})
            notes += [{"id": len(notes) + 7 * i, "image_id": 1000 + i, "caption": c} for c in captions]
        (folder / "annotations").mkdir(exist_ok=True)
        (folder / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": notes}))


def write_imagefolder(folder, photos, split_folders=False, kind="jsonl", per_caption=False):
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (colour, captions, labels, split) in photos.items():
        where = folder / split if split_folders else folder
        save_photo(where / name, colour)
        for text in captions if per_caption else [captions]:
            row = {"file_name": name, "text" if per_caption else "captions": text}
            if labels is not None:
                row["labels"] = labels
            rows.setdefault(where, []).append(row)
    for where, table in rows.items():
        write_rows(where / f"metadata.{kind}", table)


def write_table(folder, photos, kind="csv", per_caption=False, label_style="json"):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (colour, captions, labels, _) in photos.items():
        save_photo(folder / name, colour)
        for text in captions if per_caption else [captions]:
            row = {"image": name, "caption" if per_caption else "captions": text}
            if labels is not None:
                row["labels"] = "|".join(labels) if label_style == "joined" else labels
            rows.append(row)
    path = folder / f"data.{kind}"
    write_rows(path, rows)
    return path


def write_rows(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def write_hub_copy(folder, photos, own_split=True):
    """A local stand-in for a hub data set: parquet files with embedded photos, as a downloaded copy has them."""
    folder.mkdir(parents=True, exist_ok=True)
    by_split = {}
    for name, (colour, captions, labels, split) in photos.items():
        row = {"image_id": name, "image": {"bytes": photo_bytes(colour), "path": None}, "sentences": captions}
        if labels is not None:
            row["tags"] = labels
        by_split.setdefault(split if own_split else "train", []).append(row)
    for split, rows in by_split.items():
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
        ds.to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return folder


# ------------------------------------------------------------------------------------------------ comparisons


def rows_of(photos):
    """Each split's photo rows with the photo's pixels instead of its path (which differs between layouts)."""
    out = {}
    for split, ds in photos.items():
        assert set(ds.column_names) >= {"image_id", "image", "captions"}
        out[split] = [
            (row["image_id"], row["captions"], row.get("labels"),
             hashlib.sha1(np.asarray(row["image"].convert("RGB")).tobytes()).hexdigest())
            for row in ds
        ]
    return out


def pairs_of(photos):
    pairs = to_pairs(photos)
    names = pairs["train"].features["labels"].feature.names
    return names, {split: [(r["image_id"], r["caption"], r["labels"]) for r in ds.select_columns(
        ["image_id", "caption", "labels"])] for split, ds in pairs.items() if len(ds)}


def load_quietly(source, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # a clean collection loads without a warning
        return load_photos(source, **options)


def cli_tables(source, capsys, *options):
    assert data_main(["--dataset", str(source), *options]) == 0
    return capsys.readouterr().out.split("\n", 1)[1]  # all but the line naming the source


def test_every_layout_without_its_own_split_gives_the_same_photos_pairs_and_concepts(tmp_path, capsys):
    photos = collection()
    layouts = {
        "kaggle": (write_kaggle, {}),
        "karpathy": (lambda f, p: write_karpathy(f, p, own_split=False), {}),
        "coco": (write_coco, {}),
        "imagefolder jsonl": (write_imagefolder, {}),
        "imagefolder csv, a caption a row": (lambda f, p: write_imagefolder(f, p, kind="csv", per_caption=True), {}),
        "csv table": (lambda f, p: write_table(f, p), {}),
        "jsonl table, a caption a row": (lambda f, p: write_table(f, p, kind="jsonl", per_caption=True), {}),
        "hub copy": (lambda f, p: write_hub_copy(f, p, own_split=False), {"caption_column": "sentences"}),
    }
    results = {}
    for name, (write, options) in layouts.items():
        folder = tmp_path / name.replace(" ", "_").replace(",", "")
        folder.mkdir()
        write(folder, photos)
        loaded = load_quietly(folder, **options)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        results[name] = (rows_of(loaded), pairs_of(loaded), cli_tables(folder, capsys, *flags))
    expected = results.pop("kaggle")
    assert [len(rows) for rows in expected[0].values()] == [18, 3, 3]
    assert len(expected[1][0]) >= 3  # concepts mined
    for name, result in results.items():
        assert result[0] == expected[0], name
        assert result[1] == expected[1], name
        assert result[2] == expected[2], name


def test_layouts_with_their_own_split_keep_it(tmp_path):
    photos = collection()
    write_karpathy(tmp_path / "karpathy", photos)
    write_imagefolder(tmp_path / "imagefolder", photos, split_folders=True)
    write_hub_copy(tmp_path / "hub", photos)
    expected = rows_of(load_quietly(tmp_path / "karpathy" / "dataset_flickr8k.json"))
    assert [row[0] for row in expected["validation"]] == [f"p{i:02d}.png" for i in range(24) if i % 6 == 4]
    assert rows_of(load_quietly(tmp_path / "imagefolder")) == expected
    assert rows_of(load_quietly(tmp_path / "hub", caption_column="sentences")) == expected
    # COCO has no test split: train2017 and val2017 load as train and validation (train.py then holds out photos)
    write_coco(tmp_path / "coco", photos, splits=("train", "val", "test"))
    coco = rows_of(load_quietly(tmp_path / "coco"))
    assert coco == expected


def test_labelled_layouts_give_the_same_labels_and_pairs_without_leave_one_out(tmp_path, capsys):
    photos = collection(labelled=True)
    sources = {
        "imagefolder": (write_imagefolder(tmp_path / "imagefolder", photos) or tmp_path / "imagefolder", {}),
        "csv": (write_table(tmp_path / "csv", photos, label_style="joined"), {}),
        "jsonl a caption a row": (write_table(tmp_path / "jsonl", photos, kind="jsonl", per_caption=True), {}),
        "hub": (write_hub_copy(tmp_path / "hub", photos, own_split=False),
                {"caption_column": "sentences", "label_column": "tags"}),
    }
    results = {}
    for name, (source, options) in sources.items():
        loaded = load_quietly(source, **options)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        results[name] = (rows_of(loaded), pairs_of(loaded), cli_tables(source, capsys, *flags))
    rows, (names, pairs), table = results.pop("imagefolder")
    assert rows["train"][0][2] == photos[rows["train"][0][0]][2]  # given labels, as given
    assert sorted(names) == ["blue", "green", "red", "white"] and "| label |" in table
    # One pair per caption, every pair labelled with its photo's labels: no caption decides its own label.
    first = [pair for pair in pairs["train"] if pair[0] == rows["train"][0][0]]
    assert [caption for _, caption, _ in first] == photos[rows["train"][0][0]][1]
    assert all(labels == sorted(names.index(n) for n in photos[rows["train"][0][0]][2]) for _, _, labels in first)
    for name, result in results.items():
        assert result == (rows, (names, pairs), table), name


def test_bad_rows_are_skipped_and_counted_in_one_warning(tmp_path):
    photos = collection(12, labelled=True)
    path = write_table(tmp_path, photos, kind="jsonl")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    with open(path, "a") as f:
        f.write('{"image": "p00.png", "captions": ["cut off\n')  # malformed JSON line
        f.write("[1, 2]\n")  # a line that is no record
        f.write(json.dumps({"image": "ghost.png", "captions": ["a dog"], "labels": []}) + "\n")
        f.write(json.dumps({"image": "corrupt.png", "captions": ["a dog"], "labels": ["red"]}) + "\n")
        f.write(json.dumps({"image": "p01.png", "captions": ["", "  "], "labels": ["red"]}) + "\n")
        f.write(json.dumps({"image": "p02.png", "captions": ["more"], "labels": None}) + "\n")
        f.write(json.dumps({"captions": ["no photo"], "labels": ["red"]}) + "\n")
    with pytest.warns(DataWarning) as record:
        loaded = load_photos(path)
    assert len(record) == 1
    message = str(record[0].message)
    for counted in ("2 malformed line", "1 captions for a missing photo", "1 file that is no image",
                    "2 empty caption", "1 photo without labels", "1 row without a photo"):
        assert counted in message, counted
    assert sorted(sum((list(ds["image_id"]) for ds in loaded.values()), [])) == sorted(photos)
    # The extra rows of p01 and p02 were dropped; the good rows of those photos kept their captions.
    p01 = next(row for ds in loaded.values() for row in ds if row["image_id"] == "p01.png")
    assert p01["captions"] == photos["p01.png"][1]


def test_a_malformed_imagefolder_metadata_line_is_skipped_not_fatal(tmp_path):
    photos = collection(12)
    write_imagefolder(tmp_path, photos)
    clean = rows_of(load_quietly(tmp_path))
    with open(tmp_path / "metadata.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.warns(DataWarning, match="1 malformed line"):
        assert rows_of(load_photos(tmp_path)) == clean


def test_given_labels_outside_the_training_label_set_are_reported_and_dropped(tmp_path):
    photos = collection(labelled=True)
    for name, (colour, captions, labels, split) in list(photos.items()):
        if split == "validation":
            photos[name] = (colour, captions, [*labels, "zebra"], split)
        if name == "p06.png":  # a training photo with none of the labels: a negative for all
            photos[name] = (colour, captions, [], split)
    write_imagefolder(tmp_path, photos, split_folders=True)
    loaded = load_quietly(tmp_path)
    with pytest.warns(DataWarning, match=r"not in the label set: validation: 4 \(zebra \(4\)\)\.$"):
        pairs = to_pairs(loaded)
    assert "zebra" not in pairs["train"].features["labels"].feature.names
    p06 = pairs["train"].filter(lambda row: row["image_id"] == "p06.png")
    assert len(p06) == 4 and all(labels == [] for labels in p06["labels"])


def test_a_single_caption_per_photo_without_labels_is_an_error_naming_the_label_column(tmp_path):
    photos = {name: (colour, captions[:1], None, split) for name, (colour, captions, _, split) in collection().items()}
    path = write_table(tmp_path, photos)
    loaded = load_quietly(path)
    with pytest.raises(MMClassifierError, match="at least two captions per photo.*--label-column"):
        to_pairs(loaded)
    assert data_main(["--dataset", str(path)]) == 2


def test_mistakes_get_clear_errors(tmp_path):
    photos = collection(6)
    write_kaggle(tmp_path / "kaggle", photos)
    with pytest.raises(MMClassifierError, match="has no use for --label-column"):
        load_photos(tmp_path / "kaggle", label_column="tags")
    path = write_table(tmp_path / "table", photos)
    with pytest.raises(MMClassifierError, match=r"no column 'tags' \(--label-column\)"):
        load_photos(path, label_column="tags")
    (tmp_path / "plain.csv").write_text("photo,words\na.png,a dog\n")
    with pytest.raises(MMClassifierError, match="none of them image or file_name.*--image-column"):
        load_photos(tmp_path / "plain.csv")
    write_karpathy(tmp_path / "karpathy", photos)
    (tmp_path / "karpathy" / "Images").rename(tmp_path / "elsewhere")
    with pytest.raises(MMClassifierError, match="No photo of dataset_flickr8k.json found.*--image-dir"):
        load_photos(tmp_path / "karpathy")
    moved = load_quietly(DataSource(str(tmp_path / "karpathy"), image_dir=str(tmp_path / "elsewhere")))
    assert sum(len(ds) for ds in moved.values()) == 6
    (tmp_path / "broken.jsonl").write_text("")
    with pytest.raises(MMClassifierError, match="has no rows"):
        load_photos(tmp_path / "broken.jsonl")


def test_photo_rows_are_memory_mapped_and_reused(tmp_path):
    """Photo rows of your own data live in Arrow files in the cache (not in memory) and a second load reuses them."""
    path = write_table(tmp_path, collection(), per_caption=True)
    first = load_quietly(path)
    assert all(ds.cache_files for ds in first.values())
    again = load_quietly(path)
    assert [ds.cache_files for ds in again.values()] == [ds.cache_files for ds in first.values()]
    assert {split: ds._fingerprint for split, ds in again.items()} == {
        split: ds._fingerprint for split, ds in first.items()}
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "p00.png").unlink()
    with pytest.warns(DataWarning, match="1 captions for a missing photo"):
        assert "p00.png" not in sum((list(ds["image_id"]) for ds in load_photos(path).values()), [])


def write_colour_patches(folder, n=96, seed=0):
    """An imagefolder whose labels only the photos show: ``warm`` = a red patch on the left, ``cool`` = a blue patch
    on the right; every caption is the same few words, and none names a label or a colour."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = rng.integers(90, 140, (32, 32, 3), dtype=np.uint8)  # grey noise
        labels = []
        if rng.random() < 0.5:
            pixels[8:24, 2:14] = (220, 30, 30)
            labels.append("warm")
        if rng.random() < 0.5:
            pixels[8:24, 18:30] = (30, 30, 220)
            labels.append("cool")
        Image.fromarray(pixels).save(folder / f"photo{i:03d}.png")
        rows.append({"file_name": f"photo{i:03d}.png", "captions": ["a photo", "a picture of a scene"],
                     "labels": labels})
    write_rows(folder / "metadata.jsonl", rows)


def test_a_model_learns_given_labels_that_no_caption_gives_away(tmp_path):
    import train  # the repository root is on sys.path through pytest's `pythonpath` option (pyproject.toml)
    from conftest import TINY_TRAIN_ARGS
    from mm_classifier import Predictor

    data = tmp_path / "patches"
    data.mkdir()
    write_colour_patches(data)
    out = tmp_path / "model"
    assert train.main(["--dataset", str(data), "--output-dir", str(out), "--modality", "image", *TINY_TRAIN_ARGS,
                       "--epochs", "12", "--learning-rate", "3e-3"]) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_mAP"] > 0.85, results  # chance: about 0.5
    predictor = Predictor.from_pretrained(out)
    assert sorted(predictor.concepts) == ["cool", "warm"]
    assert predictor.model.config.concept_words is None  # given labels: no words mined them


@pytest.mark.slow
def test_train_py_and_evaluation_read_a_hub_copy_through_the_column_options(tmp_path, capsys):
    """The options reach every load of a run: training, the comparison report, and the evaluation CLI."""
    import train
    from conftest import TINY_TRAIN_ARGS
    from mm_classifier.evaluation import main as evaluation_main

    source = write_hub_copy(tmp_path / "hub", collection(36, labelled=True))
    options = ["--caption-column", "sentences", "--label-column", "tags"]
    assert train.main(["--dataset", str(source), *options, "--output-dir", str(tmp_path / "out"), *TINY_TRAIN_ARGS,
                       "--epochs", "1"]) == 0
    assert "Image-only, text-only and fusion models compared" in (tmp_path / "out" / "report.md").read_text()
    capsys.readouterr()
    assert evaluation_main(["--model", str(tmp_path / "out" / "fusion"), "--dataset", str(source), *options,
                            "--split", "validation", "--output-dir", str(tmp_path / "eval")]) == 0
    assert "pairs ->" in capsys.readouterr().out
    assert evaluation_main(["--model", str(tmp_path / "out" / "fusion"), "--dataset", str(source)]) == 2


def test_coco_captions_of_missing_photos_and_photos_without_captions_are_counted(tmp_path):
    photos = collection(12)
    write_coco(tmp_path, photos)
    path = tmp_path / "annotations" / "captions_train2017.json"
    coco = json.loads(path.read_text())
    coco["annotations"] += [{"id": 9001, "image_id": 77, "caption": "a ghost"}, {"id": 9002, "image_id": 77,
                                                                                 "caption": "another"}]
    coco["annotations"] = [note for note in coco["annotations"] if note["image_id"] != 1003]  # p03.png
    coco["annotations"].reverse()  # annotations come in any order; captions keep their order in the file
    path.write_text(json.dumps(coco))
    with pytest.warns(DataWarning, match="1 captions for a missing photo, 1 photo without captions"):
        loaded = load_photos(tmp_path)
    rows = {row[0]: row[1] for split in rows_of(loaded).values() for row in split}
    assert sorted(rows) == sorted(set(photos) - {"p03.png"})
    assert rows["p00.png"] == photos["p00.png"][1][::-1]


def test_split_folders_may_reuse_file_names_and_a_relative_path_gives_the_same_ids(tmp_path, monkeypatch):
    photos = collection(24)
    folder = tmp_path / "imagefolder"
    write_imagefolder(folder, photos, split_folders=True)
    (folder / "test" / "p01.png").write_bytes((folder / "train" / "p00.png").read_bytes())  # another photo, same name
    with open(folder / "test" / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "p01.png", "captions": ["a dog", "the dog"]}) + "\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_quietly("imagefolder")
    assert "p01.png" in loaded["train"]["image_id"] and "p01.png" in loaded["test"]["image_id"]
    assert rows_of(loaded)["validation"] == rows_of(load_quietly(folder))["validation"]


def test_a_label_file_sets_the_label_set_and_its_order(tmp_path):
    from mm_classifier import CONCEPT_LEXICON
    from mm_classifier.labels import ConceptFileError, load_label_file
    from mm_classifier.pairs import load_training_data

    source = write_table(tmp_path / "data", collection(labelled=True), kind="jsonl")
    (tmp_path / "labels.txt").write_text("white\nred\n")
    with pytest.warns(DataWarning, match=r"not in the label set: train: \d+ \(blue .*; validation: .*; test: "):
        data = load_training_data(str(source), split_seed=0, lexicon=CONCEPT_LEXICON, num_concepts=20, min_votes=2,
                                  labels_file=tmp_path / "labels.txt")
    assert data.concepts == ["white", "red"] and data.lexicon is None
    assert data.splits["train"].pairs.labels.shape[1] == 2
    (tmp_path / "labels.json").write_text('["red", "red"]')
    with pytest.raises(ConceptFileError, match="more than once"):
        load_label_file(tmp_path / "labels.json")
    unlabelled = write_table(tmp_path / "plain", collection(), kind="jsonl")
    with pytest.raises(MMClassifierError, match="no labels column"):
        load_training_data(str(unlabelled), split_seed=0, lexicon=CONCEPT_LEXICON, num_concepts=20, min_votes=2,
                           labels_file=tmp_path / "labels.txt")
