"""Decoding + resizing photos into the training cache: the project's path vs a naive loop, then a cached rerun.

    python benchmarks/data_preparation.py [--dataset ../shared/flickr8k] [--image-size 224] [--limit 2000]
"""

import argparse
import os
import tempfile

import common  # noqa: F401  (offline environment, import path)
import numpy as np
import torch
from PIL import Image


def naive(paths, size):
    """Full decode, convert, resize, to tensor: what a notebook usually does."""
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=2000, help="photos of the training split to use")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from mm_classifier import MultiModalProcessor, load_flickr8k
    from mm_classifier.features import photo_pixels

    photos = load_flickr8k(args.dataset)["train"]
    photos = photos.select(range(min(args.limit, len(photos))))
    paths = [v["path"] for v in photos.cast_column("image", photos.features["image"].__class__(decode=False))["image"]]
    processor = MultiModalProcessor(None, image_size=args.image_size)
    n = len(paths)

    naive_pixels, naive_s = common.timed(naive, paths, args.image_size)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MM_CLASSIFIER_CACHE"] = cache  # a cold cache for the first run
        first, first_s = common.timed(photo_pixels, photos, processor, num_proc=args.num_proc)
        second, second_s = common.timed(photo_pixels, photos, processor, num_proc=args.num_proc)
        # photo_pixels returns a table on the cache file that reads rows when asked; a copy of every photo:
        everything, copy_s = common.timed(second.tensor)
        assert torch.equal(first.tensor(), everything)
    agreement = (everything.float() - naive_pixels.float()).abs().mean().item()
    rows = [
        ("naive loop: full decode + resize", f"{n / naive_s:.0f}", f"{naive_s:.1f}"),
        (f"project: full decode, datasets.map(num_proc={args.num_proc}), Arrow cache", f"{n / first_s:.0f}",
         f"{first_s:.1f}"),
        ("project, second run (cache reused; rows read on demand)", f"{n / second_s:.0f}", f"{second_s:.2f}"),
        ("  then copying every photo of it into one tensor", f"{n / copy_s:.0f}", f"{copy_s:.2f}"),
    ]
    print(f"\n{n} photos of {args.dataset} -> {args.image_size} px on {common.machine()}\n")
    print(common.table(["path", "photos/s", "seconds"], rows))
    print(f"\nmean |project - naive| pixel difference: {agreement:.2f} / 255; peak RSS {common.peak_rss_mib():.0f} MiB")
    print(f"KEY RATIO: first run {naive_s / first_s:.1f}x the naive loop; cached rerun {first_s / second_s:.0f}x the "
          f"first run ({first_s / (second_s + copy_s):.0f}x with a copy of every photo)")


if __name__ == "__main__":
    main()
