"""Does the pipeline hold at COCO's size? Time and peak memory of loading, pairing, tokenising, feature caching and one
training epoch on cached features, for synthetic collections of growing size.

    python benchmarks/scale.py                                  # 8k, 32k and 128k photos, 5 captions each (CSV table)
    python benchmarks/scale.py --sizes 500 1000 --layout coco   # a smoke run

Each size is generated once (small PNG photos, captions that name the lexicon's concepts) under --workdir, then run in
a fresh process with empty caches, so every figure is a cold first run and each process's peak memory is its own.
Peak RSS (``getrusage``) counts the memory-mapped Arrow pages a pass has read, which the kernel reclaims when memory is
short; peak anonymous memory (``RssAnon``, sampled) is what the process itself holds.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
import numpy as np

SUBJECTS = ["man", "woman", "boy", "girl", "dog", "child", "people"]
PLACES = ["grass", "snow", "water", "beach", "street", "field", "mountain"]
THINGS = ["ball", "bike", "tree", "car", "hat", "shirt", "rock"]
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (240, 240, 240), (30, 30, 30)]


# --------------------------------------------------------------------------------------------- synthetic collections


def generate(folder: Path, num_photos: int, captions_per_photo: int, layout: str, seed: int = 0) -> None:
    """``num_photos`` 24x24 PNG photos (a coloured ground and a square) and their captions, in ``layout``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    photos = []
    for i in range(num_photos):
        subject, place, thing = SUBJECTS[i % 7], PLACES[(i // 7) % 7], THINGS[(i // 49) % 7]
        pixels = np.empty((24, 24, 3), np.uint8)
        pixels[:] = COLOURS[(i // 7) % 6]
        pixels[6:18, 6:18] = COLOURS[i % 6]
        name = f"{i:07d}.png"
        Image.fromarray(pixels).save(folder / "images" / name)
        # About 11 words, as COCO's captions have; one photo in a hundred has a long one, so that (as in COCO) the
        # longest caption fills the 32 tokens the tokenizer keeps.
        first, second = rng.permutation([place, thing])
        captions = [f"a {subject} is seen with a {first} and some {second} in picture {c}" for c in
                    range(captions_per_photo)]
        if i % 100 == 0:
            captions[0] += " while " + " ".join(rng.choice(SUBJECTS + PLACES + THINGS, 30))
        photos.append((name, captions))
    WRITERS[layout](folder, photos)


def write_csv(folder: Path, photos) -> None:
    """One row per caption (as COCO's annotations are), image paths relative to the table."""
    with open(folder / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name, captions in photos:
            writer.writerows([f"images/{name}", caption] for caption in captions)


def write_coco(folder: Path, photos) -> None:
    (folder / "images").rename(folder / "train2017")
    images = [{"id": i, "file_name": name} for i, (name, _) in enumerate(photos)]
    notes = [{"id": len(photos) * c + i, "image_id": i, "caption": caption}
             for i, (_, captions) in enumerate(photos) for c, caption in enumerate(captions)]
    (folder / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": notes}))


def write_imagefolder(folder: Path, photos) -> None:
    with open(folder / "images" / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps({"file_name": name, "captions": captions}) + "\n" for name, captions in photos)


def write_kaggle(folder: Path, photos) -> None:
    """Flickr8k's Kaggle layout, which is read into Python (for comparison)."""
    with open(folder / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name, captions in photos:
            writer.writerows([name, caption] for caption in captions)


WRITERS = {"csv": write_csv, "coco": write_coco, "imagefolder": write_imagefolder, "kaggle": write_kaggle}
SOURCE = {"csv": "captions.csv", "coco": ".", "imagefolder": "images", "kaggle": "."}


# --------------------------------------------------------------------------------------------- one measured run


class AnonPeak:
    """Samples the process's anonymous resident memory (``RssAnon``) in a thread; ``peak`` in MiB."""

    def __init__(self, interval: float = 0.05):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                anon = next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
            self.peak = max(self.peak, anon / 1024)
            time.sleep(interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_pipeline(source: str, image_size: int, batch_size: int) -> dict:
    """The training path of train.py's fusion stage on cached frozen features, stage by stage."""
    import torch
    from accelerate import Accelerator

    from mm_classifier import CONCEPT_LEXICON, MultiModalClassifier, MultiModalConfig, MultiModalProcessor
    from mm_classifier.data import arrow_batches, load_photos, to_pairs
    from mm_classifier.pairs import PairCollator, PhotoInput, pair_tables
    from mm_classifier.tokenization import build_tokenizer
    from mm_classifier.training import TrainState, dataloaders, optimizer_and_schedule, split_inputs, train_epoch

    torch.manual_seed(0)
    anon, seconds, started = AnonPeak(), {}, time.perf_counter()

    def lap(stage):
        nonlocal started
        seconds[stage], started = time.perf_counter() - started, time.perf_counter()

    photos = load_photos(source)
    lap("loading")
    pairs = to_pairs(photos, lexicon=CONCEPT_LEXICON)
    lap("pairing")
    captions = (c for batch in arrow_batches(pairs["train"], ["caption"]) for c in batch["caption"].to_pylist())
    tokenizer = build_tokenizer(captions)
    splits = pair_tables(photos, pairs, MultiModalProcessor(tokenizer))
    lap("tokenising")
    concepts = pairs["train"].features["labels"].feature.names
    config = MultiModalConfig(modality="fusion", backbone="test_efficientnet", image_size=image_size,
                              image_mirror_average=False, id2label=dict(enumerate(concepts)),
                              vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = MultiModalClassifier(config)
    model.freeze_backbone(0)
    processor = MultiModalProcessor.from_config(config, tokenizer)
    inputs = split_inputs(model, processor, splits["train"], PhotoInput.FROZEN_FEATURES, "cpu", num_proc=2)
    lap("feature caching")
    collate = PairCollator(processor, inputs, uses_image=True, uses_text=True)
    train_dl, *_ = dataloaders(splits["train"].pairs, splits["validation"].pairs, splits["test"].pairs, batch_size,
                               seed=0)
    optimizer, scheduler = optimizer_and_schedule(model, 1e-3, 0.01, len(train_dl), 1)
    accelerator = Accelerator(cpu=True)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    train_epoch(model, train_dl, collate, optimizer, scheduler, accelerator, TrainState(), seed=0, desc="epoch")
    lap("training epoch")
    return {"photos": sum(len(split) for split in photos.values()), "pairs": sum(len(p) for p in pairs.values()),
            "seconds": seconds, "peak_rss_mib": common.peak_rss_mib(), "peak_anon_mib": anon.stop()}


def measure(folder: Path, layout: str, image_size: int, batch_size: int) -> dict:
    """Run the pipeline on ``folder`` in a fresh process with empty caches; its result as a dict."""
    caches = folder / "caches"
    shutil.rmtree(caches, ignore_errors=True)
    env = {**os.environ, "MM_CLASSIFIER_CACHE": str(caches / "mm"), "HF_DATASETS_CACHE": str(caches / "hf"),
           "TQDM_DISABLE": "1"}
    command = [sys.executable, __file__, "--run", str(folder / SOURCE[layout]), "--image-size", str(image_size),
               "--batch-size", str(batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    shutil.rmtree(caches, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 32000, 128000], help="photos per collection")
    parser.add_argument("--captions", type=int, default=5, help="captions per photo")
    parser.add_argument("--layout", choices=sorted(WRITERS), default="csv")
    parser.add_argument("--image-size", type=int, default=32, help="the model's input side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, help="keep the generated collections here (default: a temp folder)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # the measured child process
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_pipeline(args.run, args.image_size, args.batch_size)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mm_scale_"))
    results = {}
    for size in args.sizes:
        folder = workdir / f"{args.layout}_{size}_{args.captions}"
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            _, generate_s = common.timed(generate, folder, size, args.captions, args.layout)
            (folder / "done").touch()
            print(f"generated {size} photos in {generate_s:.0f} s", file=sys.stderr)
        results[size] = measure(folder, args.layout, args.image_size, args.batch_size)
        print(f"{size} photos: {json.dumps(results[size])}", file=sys.stderr)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    stages = list(next(iter(results.values()))["seconds"])
    rows = [(f"{size:,}", f"{r['pairs']:,}", *(f"{r['seconds'][s]:.1f}" for s in stages),
             f"{sum(r['seconds'].values()):.1f}", f"{r['peak_rss_mib']:,.0f}", f"{r['peak_anon_mib']:,.0f}")
            for size, r in results.items()]
    first, last = results[args.sizes[0]], results[args.sizes[-1]]
    growth = args.sizes[-1] / args.sizes[0]
    rows.append((f"ratio {args.sizes[-1]:,} / {args.sizes[0]:,}", f"{last['pairs'] / first['pairs']:.1f}x",
                 *(f"{last['seconds'][s] / max(first['seconds'][s], 1e-9):.1f}x" for s in stages),
                 f"{sum(last['seconds'].values()) / sum(first['seconds'].values()):.1f}x",
                 f"{last['peak_rss_mib'] / first['peak_rss_mib']:.2f}x",
                 f"{last['peak_anon_mib'] / first['peak_anon_mib']:.2f}x"))
    print(f"\n{args.layout} layout, {args.captions} captions per photo, {args.image_size} px, batch {args.batch_size}, "
          f"on {common.machine()}\n")
    print(common.table(["photos", "pairs", *(f"{s} (s)" for s in stages), "total (s)", "peak RSS (MiB)",
                        "peak anon (MiB)"], rows))
    total = sum(last["seconds"].values()) / sum(first["seconds"].values())
    print(f"KEY RATIO: {growth:.0f}x the photos take {total:.1f}x the time (target <= {growth:.0f}x) and "
          f"{last['peak_rss_mib'] / first['peak_rss_mib']:.2f}x the peak RSS (target < 2x)")


if __name__ == "__main__":
    main()
