"""Training-epoch throughput with a frozen backbone: cached backbone features vs recomputing them every epoch.

    python benchmarks/training_epoch.py [--dataset ../shared/flickr8k] [--image-size 224] [--limit 1000]
"""

import argparse
import time

import common  # noqa: F401
import torch


def epoch(model, optimizer, batches, make_inputs):
    model.train()
    for index, labels in batches:
        loss = model(**make_inputs(index), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--limit", type=int, default=1000, help="training photos")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs after the first (cache-building) one")
    args = parser.parse_args()

    from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor, load_flickr8k
    from mm_classifier.features import photo_pixels, photos_key, stem_outputs

    torch.manual_seed(0)
    photos = load_flickr8k(args.dataset)["train"]
    photos = photos.select(range(min(args.limit, len(photos))))
    config = MultiModalConfig(modality="image", backbone=args.backbone, image_size=args.image_size,
                              id2label={i: f"c{i}" for i in range(20)})
    model = MultiModalClassifier(config)
    model.freeze_backbone(0)
    processor = MultiModalProcessor.from_config(config)
    pixels = photo_pixels(photos, processor)
    labels = (torch.rand(len(pixels), 20) < 0.1).float()
    order = torch.randperm(len(pixels)).split(args.batch_size)
    batches = [(index, labels[index]) for index in order]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def recompute(index):
        return {"pixel_values": processor.normalize(pixels[index]).contiguous(memory_format=torch.channels_last)}

    model.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    for _ in range(args.epochs):
        epoch(model, optimizer, batches, recompute)
    recompute_rate = len(pixels) * args.epochs / (time.perf_counter() - started)

    key = photos_key(photos) + str(args.image_size)
    _, build_s = common.timed(stem_outputs, pixels, key, model, processor, 0)
    cached = stem_outputs(pixels, key, model, processor, 0)  # second call: read back from the Arrow cache

    def from_cache(index):
        return {"stem_output": cached[index].float()}

    started = time.perf_counter()
    for _ in range(args.epochs):
        epoch(model, optimizer, batches, from_cache)
    cached_rate = len(pixels) * args.epochs / (time.perf_counter() - started)

    print(f"\n{len(pixels)} photos of {args.dataset} at {args.image_size} px, {args.backbone} frozen, "
          f"batch {args.batch_size}, on {common.machine()}\n")
    print(common.table(["path", "samples/s per epoch"], [
        ("recompute the frozen backbone every epoch", f"{recompute_rate:.0f}"),
        ("cached backbone features (after the first epoch)", f"{cached_rate:.0f}"),
        ("building the feature cache once (first epoch)", f"{len(pixels) / build_s:.0f}"),
    ]))
    print(f"\npeak RSS {common.peak_rss_mib():.0f} MiB")
    print(f"KEY RATIO: cached features train {cached_rate / recompute_rate:.0f}x faster per epoch than recomputing")


if __name__ == "__main__":
    main()
