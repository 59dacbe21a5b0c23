"""The built-in sample: synthetic scenes with captions, written in the Kaggle layout (``images/`` +
``captions.txt``) under the cache root, with where each thing was drawn (``regions.json``).

Designed so that both modalities matter: everything in a scene is drawn, but men and women (and boys and
girls) are drawn alike, so only a caption tells them apart; each caption in turn names the ground and each
object only with probability ``MENTION_PROBABILITY``, so only the photo shows everything.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

from .cache import cache_root

SAMPLE_VERSION = 3
NUM_PHOTOS = 1600
IMAGE_SIZE = 64
CAPTIONS_PER_PHOTO = 5
MENTION_PROBABILITY = 0.75
REGIONS_FILE = "regions.json"

GROUNDS = {  # concept -> (colour, words a caption uses)
    "grass": ((120, 190, 80), ["on the grass", "on a lawn", "on green grass"]),
    "snow": ((235, 238, 245), ["in the snow", "on snowy ground", "in deep snow"]),
    "water": ((40, 90, 200), ["in the water", "by the lake", "in a river"]),
    "beach": ((225, 200, 130), ["on the beach", "on the sand", "at the beach"]),
}
PEOPLE = {  # concept -> (adult?, words)
    "man": (True, ["man", "guy", "gentleman"]),
    "woman": (True, ["woman", "lady"]),
    "boy": (False, ["boy", "young boy"]),
    "girl": (False, ["girl", "little girl"]),
}
OBJECTS = {  # concept -> words (drawn by _draw_object)
    "dog": ["a dog", "a puppy", "a brown dog"],
    "ball": ["a ball", "a red ball"],
    "bike": ["a bike", "a bicycle"],
    "tree": ["a tree", "a tall tree"],
    "car": ["a car", "a parked car", "a truck"],
}
# Shirts never take an object's colour, so a colour seen in a photo points to one concept.
SHIRT_COLOURS = ["yellow", "black", "white", "purple", "teal", "navy"]
VERBS = ["is standing", "is playing", "is walking", "poses", "is waiting", "is resting"]
PLURAL_VERBS = ["are standing", "are playing", "are walking", "pose", "are waiting"]
RGB = {
    "yellow": (230, 210, 40), "black": (20, 20, 20), "white": (250, 250, 250), "purple": (120, 40, 160),
    "teal": (0, 140, 140), "navy": (20, 20, 90),
}


def sample_folder(seed: int = 0, num_photos: int = NUM_PHOTOS, root: Path | None = None) -> Path:
    """Return the sample's folder, generating it on first use (a few seconds)."""
    folder = (root or cache_root()) / f"sample-v{SAMPLE_VERSION}-seed{seed}-n{num_photos}"
    if not (folder / "captions.txt").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Generate next to the target, then rename: a killed run never leaves a half-written sample behind.
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
        try:
            generate_sample(tmp, seed=seed, num_photos=num_photos)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process won the race; its copy is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif not (folder / REGIONS_FILE).is_file():
        # A folder generated before the regions were written: replay the generator for them (same seed, same scenes).
        _write_json(folder / REGIONS_FILE, {name: regions for name, _, regions, _, _ in _scenes(seed, num_photos)})
    return folder


def generate_sample(folder: Path, seed: int = 0, num_photos: int = NUM_PHOTOS) -> None:
    """Write ``images/*.png``, ``captions.txt`` and ``regions.json`` for ``num_photos`` synthetic scenes,
    deterministically. See :func:`read_regions` for the regions."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    all_regions = {}
    with open(folder / "captions.txt", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name, image, regions, captions, _ in _scenes(seed, num_photos):
            image.save(folder / "images" / name)
            all_regions[name] = regions
            for caption in captions:
                writer.writerow([name, caption])
    _write_json(folder / REGIONS_FILE, all_regions)


def write_ground_table(seed: int = 0, num_photos: int = NUM_PHOTOS, root: Path | None = None) -> Path:
    """A single-label version of the sample: ``grounds.csv`` in the sample's folder, one row per caption
    (``image``, ``caption``, ``labels``) labelled with its scene's one ground (grass, snow, water or beach).

    ``python train.py --dataset sample-grounds`` trains single-label models on it (detected: one label a photo).
    """
    folder = sample_folder(seed=seed, num_photos=num_photos, root=root)
    table = folder / "grounds.csv"
    if not table.is_file():
        tmp = table.with_name(f"{table.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption", "labels"])
            for name, _, _, captions, scene in _scenes(seed, num_photos):
                for caption in captions:
                    writer.writerow([f"images/{name}", caption, scene["ground"]])
        os.replace(tmp, table)
    return table


# The names train.py's --dataset gives the built-in data: the sample (multi-label concepts mined from its captions)
# and its single-label version (each photo's ground).
BUILT_IN = ("sample", "sample-grounds")


def built_in_path(name: str, seed: int = 0) -> Path:
    """Where the built-in data set ``name`` (one of :data:`BUILT_IN`) is, written on first use."""
    return write_ground_table(seed=seed) if name == "sample-grounds" else sample_folder(seed=seed)


def read_regions(folder: Path) -> dict[str, list[dict]]:
    """Where each thing of each photo was drawn: photo name -> ``[{"concept": "dog", "box": [x0, y0, x1, y1]}, ...]``.

    A box is the bounding box of the pixels that drawing the thing changed, in the photo's pixels, ``x1`` and
    ``y1`` exclusive (the thing lies in ``pixels[y0:y1, x0:x1]``). People are named by their concept (``"man"``,
    ``"woman"``, ``"boy"``, ``"girl"``), objects by theirs. A later thing may hide part of an earlier one.
    """
    return json.loads((Path(folder) / REGIONS_FILE).read_text(encoding="utf-8"))


def _scenes(seed: int, num_photos: int):
    """The sample's scenes in order: (photo name, image, regions, captions, scene). One random stream draws them all,
    so the order of the draws below is part of the sample (changing it changes every photo and caption)."""
    rng = random.Random(seed)
    for index in range(num_photos):
        scene = _random_scene(rng)
        image, regions = _draw_scene(scene, rng)
        captions = [_caption(scene, rng) for _ in range(CAPTIONS_PER_PHOTO)]
        yield f"scene_{index:05d}.png", image, regions, captions, scene


def _write_json(path: Path, value) -> None:
    # Next to the target, then renamed: a reader never sees half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _random_scene(rng: random.Random) -> dict:
    people = [rng.choice(list(PEOPLE)) for _ in range(rng.choice([1, 1, 2]))]
    objects = rng.sample(list(OBJECTS), rng.choice([1, 2]))
    return {
        "ground": rng.choice(list(GROUNDS)),
        "people": [(p, rng.choice(SHIRT_COLOURS)) for p in people],
        "objects": objects,
    }


def _draw_scene(scene: dict, rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """The scene's photo, and each thing's concept and box (see :func:`read_regions`)."""
    s = IMAGE_SIZE
    image = Image.new("RGB", (s, s), (150 + rng.randint(-20, 20), 200 + rng.randint(-20, 20), 240))
    draw = ImageDraw.Draw(image)
    horizon = rng.randint(s // 3, s // 2)
    draw.rectangle([0, horizon, s, s], fill=_jitter(GROUNDS[scene["ground"]][0], rng))
    # Left-to-right slots keep things from hiding each other.
    things = [("object", o) for o in scene["objects"]] + [("person", p) for p in scene["people"]]
    rng.shuffle(things)
    width = s // len(things)
    regions = []
    for slot, (kind, what) in enumerate(things):
        x = slot * width + width // 2 + rng.randint(-2, 2)
        y = rng.randint(horizon + 8, s - 2)  # feet / bottom
        before = image.copy()
        if kind == "person":
            concept, shirt = what
            _draw_person(draw, x, y, adult=PEOPLE[concept][0], shirt=RGB[shirt], rng=rng)
        else:
            concept = what
            _draw_object(draw, what, x, y, rng)
        # The pixels the drawing changed, so a box never depends on a shape's arithmetic repeated here.
        box = ImageChops.difference(before, image).getbbox()
        if box is not None:
            regions.append({"concept": concept, "box": list(box)})
    return image, regions


def _jitter(colour, rng, amount=12):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _draw_person(draw, x, y, adult, shirt, rng):
    h = rng.randint(34, 40) if adult else rng.randint(20, 24)
    head = max(3, h // 6)
    skin = _jitter((230, 190, 160), rng, 20)
    draw.line([x - 3, y, x - 2, y - h // 2], fill=(30, 30, 60), width=3)  # legs
    draw.line([x + 3, y, x + 2, y - h // 2], fill=(30, 30, 60), width=3)
    draw.rectangle([x - 5, y - h // 2 - h // 3, x + 5, y - h // 2], fill=shirt)  # body
    draw.ellipse([x - head, y - h, x + head, y - h + 2 * head], fill=skin)


def _draw_object(draw, concept, x, y, rng):
    # Objects fill a good part of a 64 px photo: small ones vanish in a CNN's global pooling.
    if concept == "dog":
        colour = _jitter((130, 75, 30), rng, 12)
        draw.ellipse([x - 11, y - 13, x + 7, y - 5], fill=colour)
        draw.ellipse([x + 4, y - 18, x + 12, y - 10], fill=colour)
        for dx in (-9, -5, 1, 5):
            draw.line([x + dx, y - 6, x + dx, y], fill=colour, width=2)
    elif concept == "ball":
        r = rng.randint(6, 7)
        draw.ellipse([x - r, y - 2 * r, x + r, y], fill=_jitter((230, 20, 20), rng, 15))
    elif concept == "bike":
        for cx in (x - 7, x + 7):
            draw.ellipse([cx - 6, y - 12, cx + 6, y], outline=(20, 20, 20), width=2)
        draw.line([x - 7, y - 6, x, y - 14, x + 7, y - 6], fill=_jitter((220, 0, 220), rng, 20), width=3)
    elif concept == "tree":
        draw.rectangle([x - 2, y - 16, x + 2, y], fill=(60, 60, 60))
        draw.ellipse([x - 11, y - 38, x + 11, y - 14], fill=_jitter((15, 80, 25), rng, 8))
    elif concept == "car":
        colour = _jitter((175, 175, 185), rng, 10)
        draw.rectangle([x - 13, y - 12, x + 13, y - 4], fill=colour)
        draw.rectangle([x - 7, y - 18, x + 6, y - 12], fill=colour)
        for cx in (x - 7, x + 7):
            draw.ellipse([cx - 3, y - 6, cx + 3, y], fill=(10, 10, 10))


def _caption(scene: dict, rng: random.Random) -> str:
    # People are always named (they are the subject); ground and objects only sometimes.
    people = []
    for concept, shirt in scene["people"]:
        word = rng.choice(PEOPLE[concept][1])
        phrase = f"a {word}" + (f" dressed in {shirt}" if rng.random() < 0.4 else "")
        people.append(phrase)
    subject = " and ".join(people)
    verb = rng.choice(PLURAL_VERBS if len(people) > 1 else VERBS)
    objects = [rng.choice(OBJECTS[o]) for o in scene["objects"] if rng.random() < MENTION_PROBABILITY]
    parts = [subject, verb]
    if objects:
        parts.append(rng.choice(["with", "near", "next to", "beside"]) + " " + " and ".join(objects))
    if rng.random() < MENTION_PROBABILITY:
        parts.append(rng.choice(GROUNDS[scene["ground"]][1]))
    caption = " ".join(parts)
    return caption[0].upper() + caption[1:] + rng.choice([" .", ".", ""])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mm_classifier.sample", description="Write the built-in sample "
                                     "(in the cache) and print where it is.")
    parser.add_argument("--single-label", action="store_true",
                        help="also write grounds.csv: each photo labelled with its one ground (a single-label set)")
    args = parser.parse_args()
    print(built_in_path("sample-grounds" if args.single_label else "sample"))
