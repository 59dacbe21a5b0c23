import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image

from mm_classifier import DataWarning, MMClassifierError, data, load_flickr8k, sources, to_pairs
from mm_classifier.photo_rows import FoundPhotos, SplitList
from mm_classifier.sample import generate_sample


def write_kaggle(folder, photos, extra_rows=()):
    """photos: name -> list of captions; each gets a small JPEG."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name, captions in photos.items():
            Image.new("RGB", (20, 16), (10 * len(name) % 255, 80, 120)).save(folder / "images" / name)
            for caption in captions:
                writer.writerow([name, caption])
        for row in extra_rows:
            f.write(row + "\n")


def five(word):
    return [f"A {word} on the beach, near the water", f"a {word}", f"the {word} plays", f"{word} and grass", "x"]


def test_kaggle_layout_with_quoted_commas_and_seeded_split(tmp_path):
    write_kaggle(tmp_path, {f"p{i}.jpg": five("dog") for i in range(16)})
    photos = load_flickr8k(tmp_path)
    assert set(photos) == {"train", "validation", "test"}
    assert [len(photos[s]) for s in ("train", "validation", "test")] == [12, 2, 2]
    row = photos["train"][0]
    assert isinstance(row["image"], Image.Image) and len(row["captions"]) == 5
    assert row["captions"][0] == "A dog on the beach, near the water"
    assert isinstance(photos["train"].features["image"], datasets.Image)
    # The split depends on the seed only.
    assert list(load_flickr8k(tmp_path, seed=0)["test"]["image_id"]) == list(photos["test"]["image_id"])
    assert list(load_flickr8k(tmp_path, seed=1)["train"]["image_id"]) != list(photos["train"]["image_id"])


def test_original_layout_with_split_lists_missing_photos_and_bogus_entry(tmp_path):
    (tmp_path / "Flicker8k_Dataset").mkdir()
    lines = []
    for i in range(6):
        Image.new("RGB", (20, 16)).save(tmp_path / "Flicker8k_Dataset" / f"p{i}.jpg")
        lines += [f"p{i}.jpg#{n}\ta dog number {n}" for n in range(5)]
    lines += ["2258277193_586949ec62.jpg.1#0\tA bogus entry", "garbage line without tab", "p9.jpg#0\tno such photo"]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("p0.jpg\np1.jpg\np2.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("p3.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("p4.jpg\nwithheld.jpg\n")
    with pytest.warns(DataWarning) as record:
        photos = load_flickr8k(tmp_path)
    assert [list(photos[s]["image_id"]) for s in ("train", "validation", "test")] == [
        ["p0.jpg", "p1.jpg", "p2.jpg"], ["p3.jpg"], ["p4.jpg"]]
    message = str(record[0].message)
    assert len(record) == 1  # one summary warning
    assert "1 listed in Flickr_8k.testImages.txt but missing" in message
    assert "1 malformed caption line" in message
    assert "2 captions for a missing photo" in message  # the bogus .jpg.1 entry and p9.jpg
    assert "1 photo in no split list" in message  # p5.jpg


def test_bad_photos_are_skipped_and_counted(tmp_path):
    photos = {f"ok{i}.jpg": five("dog") for i in range(8)}
    write_kaggle(tmp_path, photos, extra_rows=["ghost.jpg,a caption", ",", "broken"])
    (tmp_path / "images" / "notimage.jpg").write_bytes(b"hello")
    good = (tmp_path / "images" / "ok0.jpg").read_bytes()
    (tmp_path / "images" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (10, 10)).save(tmp_path / "images" / "nocaption.jpg")
    with open(tmp_path / "captions.txt", "a") as f:
        f.write("notimage.jpg,a dog\ntruncated.jpg,a dog\n")
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    with open(tmp_path / "captions.txt", "a") as f:
        f.write("empty.jpg,a dog\n")
    with pytest.warns(DataWarning, match="1 truncated or corrupt photo") as record:
        photos = load_flickr8k(tmp_path)
    message = str(record[0].message)
    assert "1 file that is no image" in message and "1 empty photo file" in message
    assert "1 captions for a missing photo" in message and "1 photo without captions" in message
    assert "2 malformed caption line" in message
    names = sum((list(photos[s]["image_id"]) for s in photos), [])
    assert sorted(names) == [f"ok{i}.jpg" for i in range(8)]


def test_errors_when_nothing_usable(tmp_path):
    with pytest.raises(MMClassifierError, match="does not exist"):
        load_flickr8k(tmp_path / "nope")
    with pytest.raises(MMClassifierError, match="holds no data set"):
        load_flickr8k(tmp_path)
    (tmp_path / "captions.txt").write_text("image,caption\n")
    with pytest.raises(MMClassifierError, match="no photo folder"):
        load_flickr8k(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(MMClassifierError, match="No usable photo"):
        load_flickr8k(tmp_path)


def test_splits_are_disjoint_by_photo(tiny_folder):
    photos = load_flickr8k(tiny_folder)
    ids = [set(photos[s]["image_id"]) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    pairs = to_pairs(photos)
    for split in pairs:
        assert set(pairs[split]["image_id"]) == set(photos[split]["image_id"])


def test_pairs_carry_leave_one_out_labels_and_concept_names(tmp_path):
    write_kaggle(tmp_path, {f"p{i}.jpg": five("dog") for i in range(8)})
    photos = load_flickr8k(tmp_path)
    pairs = to_pairs(photos, ["dog", "beach", "water", "grass"])
    names = pairs["train"].features["labels"].feature.names
    assert names == ["dog", "beach", "water", "grass"]
    first = pairs["train"].select(range(5))
    assert list(first["caption"]) == five("dog")
    # dog in 4 captions: everyone; beach/water/grass each in one caption: nobody reaches 2 other votes.
    assert [sorted(labels) for labels in first["labels"]] == [[0]] * 5
    assert set(first.column_names) == {"image_id", "image", "caption", "labels"}
    with pytest.raises(MMClassifierError, match="Unknown concepts"):
        to_pairs(photos, ["dog", "unicorn"])


def test_mined_concepts_come_from_training_split(tiny_folder):
    pairs = to_pairs(load_flickr8k(tiny_folder), num_concepts=3)
    assert len(pairs["train"].features["labels"].feature.names) == 3


def test_hub_layout_through_load_dataset_with_a_local_parquet_stand_in(tmp_path):
    image = Image.new("RGB", (12, 12), "red")
    captions = [["a dog 0"], ["a dog"], [""], ["dogs"], ["x"]]  # caption_i of every row
    rows = {"image": [image] * 3, **{f"caption_{i}": captions[i] * 3 for i in range(5)}}
    stand_in = tmp_path / "hub_copy"
    stand_in.mkdir()
    for split in ("train", "validation", "test"):
        ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
        ds.to_parquet(stand_in / f"{split}-00000-of-00001.parquet")
    photos = load_flickr8k(stand_in)
    assert len(photos["train"]) == 3
    assert photos["train"][0]["captions"] == ["a dog 0", "a dog", "dogs", "x"]  # empty caption dropped
    assert photos["train"][0]["image"].size == (12, 12)
    pairs = to_pairs(photos, ["dog"])
    assert len(pairs["train"]) == 12


def test_hub_id_fails_fast_offline():
    started = time.perf_counter()
    with pytest.raises(MMClassifierError, match="Offline"):
        load_flickr8k("someone/flickr8k-that-is-not-cached")
    assert time.perf_counter() - started < 30


def test_sample_is_deterministic_and_loads_through_the_folder_path(tmp_path):
    generate_sample(tmp_path / "a", seed=5, num_photos=12)
    generate_sample(tmp_path / "b", seed=5, num_photos=12)
    assert (tmp_path / "a" / "captions.txt").read_text() == (tmp_path / "b" / "captions.txt").read_text()
    for name in ("scene_00000.png", "scene_00011.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    generate_sample(tmp_path / "c", seed=6, num_photos=12)
    assert (tmp_path / "a" / "captions.txt").read_text() != (tmp_path / "c" / "captions.txt").read_text()


def test_builtin_sample_generates_quickly_and_caches():
    started = time.perf_counter()
    photos = load_flickr8k("sample")
    assert time.perf_counter() - started < 30
    assert sum(len(photos[s]) for s in photos) == 1600
    again = load_flickr8k("sample")
    assert list(again["test"]["image_id"]) == list(photos["test"]["image_id"])


def test_a_new_layout_is_one_reader_and_one_table_line(tmp_path, monkeypatch):
    """A toy layout (photos/ + captions.json with its own split) goes through the same checks as the built-in ones."""

    def read_toy(folder, source):
        captions = json.loads((folder / "captions.json").read_text())
        images = {p.name: p for p in (folder / "photos").iterdir()}
        own_split = {"train": ["a.png", "b.png", "c.png"], "validation": ["d.png"], "test": ["e.png", "ghost.png"]}
        splits = {split: SplitList("captions.json", names) for split, names in own_split.items()}
        return FoundPhotos(captions, images, "captions.json", "photos/", splits=splits)

    toy = sources.Layout("toy layout (captions.json)", lambda path: (path / "captions.json").is_file(), read_toy)
    monkeypatch.setattr(sources, "LAYOUTS", (*sources.LAYOUTS, toy))
    (tmp_path / "photos").mkdir()
    for name in "abcde":
        Image.new("RGB", (8, 8), "blue").save(tmp_path / "photos" / f"{name}.png")
    captions = {f"{name}.png": [f"a dog {name}", "a dog"] for name in "abcde"}
    (tmp_path / "captions.json").write_text(json.dumps({**captions, "ghost.png": ["a dog"]}))

    with pytest.warns(DataWarning, match="1 captions for a missing photo, 1 listed in captions.json but missing"):
        photos = load_flickr8k(tmp_path)
    assert [list(photos[s]["image_id"]) for s in ("train", "validation", "test")] == [
        ["a.png", "b.png", "c.png"], ["d.png"], ["e.png"]]
    assert photos["validation"][0]["captions"] == ["a dog d", "a dog"]
    assert photos["test"][0]["image"].size == (8, 8)
    # The "nothing found" message is written from the table, so it names the new layout too.
    with pytest.raises(MMClassifierError, match=r"toy layout \(captions.json\)"):
        load_flickr8k(tmp_path / "photos")


def test_a_file_is_not_a_data_set(tmp_path):
    (tmp_path / "captions.txt").write_text("image,caption\n")
    with pytest.raises(MMClassifierError, match="is a file; pass the folder that contains it"):
        load_flickr8k(tmp_path / "captions.txt")


def test_sample_does_not_import_data(tmp_path):
    """The sample needs only the cache root: generating it (without the package's __init__) loads no data module."""
    package_dir = Path(data.__file__).parent
    code = (
        "import sys, types\n"
        "package = types.ModuleType('mm_classifier')\n"
        f"package.__path__ = [{str(package_dir)!r}]\n"
        "sys.modules['mm_classifier'] = package\n"  # skip __init__, which imports every module
        "import mm_classifier.sample\n"
        f"mm_classifier.sample.sample_folder(num_photos=1, root=__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('mm_classifier.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "['mm_classifier.cache', 'mm_classifier.sample']"


def write_labelled_table(folder, labels_of_photo, photos=40):
    """``data.csv`` (image, caption, labels as a JSON list) for ``photos`` small PNGs; photo i gets
    ``labels_of_photo(i)``."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "labels"])
        for i in range(photos):
            Image.new("RGB", (16, 16), (i * 5 % 255, 90, 30)).save(folder / f"p{i:02d}.png")
            writer.writerow([f"p{i:02d}.png", f"photo number {i}", json.dumps(labels_of_photo(i))])
    return folder / "data.csv"


def test_one_given_label_a_photo_is_single_label_and_anything_else_multi_label(tmp_path, tiny_folder):
    grounds = ["grass", "snow", "water"]
    single = load_flickr8k(write_labelled_table(tmp_path / "one", lambda i: [grounds[i % 3]]))
    several = load_flickr8k(write_labelled_table(tmp_path / "two", lambda i: grounds[: 1 + i % 2]))
    none_for_some = load_flickr8k(write_labelled_table(tmp_path / "none", lambda i: grounds[: i % 2]))
    only_one_class = load_flickr8k(write_labelled_table(tmp_path / "same", lambda i: ["grass"]))
    assert data.problem_type_of(single) == data.SINGLE_LABEL
    for photos in (several, none_for_some, only_one_class, load_flickr8k(str(tiny_folder))):  # last: mined
        assert data.problem_type_of(photos) == data.MULTI_LABEL
    assert data.problem_type_of(single, data.MULTI_LABEL) == data.MULTI_LABEL  # asked for: a multi-label model
    with pytest.raises(MMClassifierError, match=r"several labels \(e\.g\. p\d\d\.png: grass, snow\)"):
        data.problem_type_of(several, data.SINGLE_LABEL)
    with pytest.raises(MMClassifierError, match="needs given labels.*mined from the captions"):
        data.problem_type_of(load_flickr8k(str(tiny_folder)), data.SINGLE_LABEL)


def test_single_label_pairs_drop_the_photos_without_a_class_and_say_how_many(tmp_path):
    grounds = ["grass", "snow", "water"]
    photos = load_flickr8k(write_labelled_table(tmp_path / "t", lambda i: [grounds[i % 3]]))
    with pytest.warns(DataWarning, match="not in the label set"):  # water is not a class: its labels are dropped
        pairs = to_pairs(photos, ["grass", "snow"])
    with pytest.warns(DataWarning, match="no label among the classes"):
        kept = data.single_label_pairs(pairs)
    for split in pairs:
        assert len(kept[split]) == sum(1 for labels in pairs[split]["labels"] if labels)
        assert all(len(labels) == 1 for labels in kept[split]["labels"])
    several = to_pairs(load_flickr8k(write_labelled_table(tmp_path / "s", lambda i: grounds[: 1 + i % 2])))
    with pytest.raises(MMClassifierError, match="one label a photo"):
        data.single_label_pairs(several)
