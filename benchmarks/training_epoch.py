"""Training-epoch throughput with a frozen backbone: cached backbone features vs recomputing them every epoch.

    python benchmarks/training_epoch.py [--dataset ../shared/flickr8k] [--image-size 224] [--limit 1000]
    python benchmarks/training_epoch.py --precision-sweep --limit 2048 --batch-size 128   # on a GPU

--precision-sweep (GPU) also measures full fine-tuning of the backbone in fp32, fp16 and bf16 autocast (what
train.py --mixed-precision uses), each in contiguous and channels_last memory format.
"""

import argparse
import time

import common  # noqa: F401
import torch


def epoch(model, optimizer, batches, make_inputs, device, dtype=None, scaler=None):
    """One training epoch; ``dtype`` float16/bfloat16 runs it under autocast (fp16 with a ``GradScaler``)."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    for index, labels in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**make_inputs(index), labels=labels.to(device)).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()


def precision_sweep(config, pixels, batches, processor, device, epochs):
    """Samples/s of full fine-tuning (a fresh model each time) per autocast precision and memory format."""
    from mm_classifier import MultiModalClassifier

    rows = []
    for precision, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for layout, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            torch.manual_seed(0)
            model = MultiModalClassifier(config).to(device=device, memory_format=memory_format)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

            def make_inputs(index, memory_format=memory_format):
                inputs = processor.normalize(pixels[index].to(device, non_blocking=True))
                return {"pixel_values": inputs.contiguous(memory_format=memory_format)}

            epoch(model, optimizer, batches, make_inputs, device, dtype, scaler)  # warm-up: cuDNN autotuning
            started = time.perf_counter()
            for _ in range(epochs):
                epoch(model, optimizer, batches, make_inputs, device, dtype, scaler)
            rows.append((f"{precision} autocast, {layout}", len(pixels) * epochs / (time.perf_counter() - started)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--limit", type=int, default=1000, help="training photos")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs after the first (cache-building) one")
    parser.add_argument("--precision-sweep", action="store_true",
                        help="GPU only: full fine-tuning in fp32/fp16/bf16, contiguous and channels_last")
    args = parser.parse_args()
    if args.precision_sweep and not torch.cuda.is_available():
        parser.error("--precision-sweep needs a CUDA GPU; this machine has none.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    from mm_classifier import MultiModalClassifier, MultiModalConfig, MultiModalProcessor, load_flickr8k
    from mm_classifier.features import cached_frozen_features, photo_pixels, photos_key

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

    if device.type == "cuda":
        pixels = pixels.tensor().pin_memory()

    def recompute(index):
        inputs = processor.normalize(pixels[index].to(device, non_blocking=True))
        return {"pixel_values": inputs.contiguous(memory_format=torch.channels_last)}

    model.to(device=device, memory_format=torch.channels_last)
    started = time.perf_counter()
    for _ in range(args.epochs):
        epoch(model, optimizer, batches, recompute, device)
    recompute_rate = len(pixels) * args.epochs / (time.perf_counter() - started)

    key = photos_key(photos) + str(args.image_size)
    _, build_s = common.timed(cached_frozen_features, pixels, key, model, processor, device=device)
    # read back from the Arrow cache, all at once (the benchmark times the step, not the reading)
    cached = cached_frozen_features(pixels, key, model, processor, device=device).tensor().to(device)

    def from_cache(index):
        return {"frozen_features": cached[index.to(device)].float()}

    started = time.perf_counter()
    for _ in range(args.epochs):
        epoch(model, optimizer, batches, from_cache, device)
    cached_rate = len(pixels) * args.epochs / (time.perf_counter() - started)

    print(f"\n{len(pixels)} photos of {args.dataset} at {args.image_size} px, {args.backbone} frozen, "
          f"batch {args.batch_size}, on {common.machine()}\n")
    print(common.table(["path", "samples/s per epoch"], [
        ("recompute the frozen backbone every epoch", f"{recompute_rate:.0f}"),
        ("cached backbone features (after the first epoch)", f"{cached_rate:.0f}"),
        ("building the feature cache once (first epoch)", f"{len(pixels) / build_s:.0f}"),
    ]))
    print(f"\npeak RSS {common.peak_rss_mib():.0f} MiB")
    if args.precision_sweep:
        rows = precision_sweep(config, pixels, batches, processor, device, args.epochs)
        base = rows[0][1]
        print(f"\nFull fine-tuning of {args.backbone} at {args.image_size} px, batch {args.batch_size}, "
              f"on {torch.cuda.get_device_name(0)}:\n")
        print(common.table(["precision, memory format", "samples/s", "vs fp32 contiguous"],
                           [(label, f"{rate:.0f}", f"{rate / base:.2f}x") for label, rate in rows]))
        best = max(rows, key=lambda row: row[1])
        print(f"KEY RATIO (GPU): {best[0]} trains {best[1] / base:.2f}x as fast as fp32 contiguous")
    print(f"KEY RATIO: cached features train {cached_rate / recompute_rate:.0f}x faster per epoch than recomputing")


if __name__ == "__main__":
    main()
