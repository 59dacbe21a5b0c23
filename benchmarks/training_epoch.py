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


def epoch(model, optimizer, batches, make_inputs):
    model.train()
    for index, labels in batches:
        inputs = make_inputs(index)
        loss = model(**inputs, labels=labels.to(next(iter(inputs.values())).device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def precision_sweep(model, pixels, batches, processor, device, epochs):
    """Samples/s of full fine-tuning for each autocast precision and memory format: [(label, rate)]."""
    rows = []
    for precision in ("no", "fp16", "bf16"):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            model.image_encoder.trainable_blocks = None
            model.requires_grad_(True)
            model.to(device=device, memory_format=memory_format)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

            def run_epoch():
                model.train()
                for index, labels in batches:
                    inputs = processor.normalize(pixels[index].to(device, non_blocking=True))
                    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                        loss = model(pixel_values=inputs.contiguous(memory_format=memory_format),
                                     labels=labels.to(device)).loss
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                torch.cuda.synchronize()

            run_epoch()  # warm-up: cuDNN autotuning, allocator
            started = time.perf_counter()
            for _ in range(epochs):
                run_epoch()
            rate = len(pixels) * epochs / (time.perf_counter() - started)
            layout = "channels_last" if memory_format is torch.channels_last else "contiguous"
            rows.append((f"{'fp32' if precision == 'no' else precision} autocast, {layout}", rate))
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

    if device.type == "cuda":
        pixels = pixels.pin_memory()

    def recompute(index):
        inputs = processor.normalize(pixels[index].to(device, non_blocking=True))
        return {"pixel_values": inputs.contiguous(memory_format=torch.channels_last)}

    model.to(device=device, memory_format=torch.channels_last)
    started = time.perf_counter()
    for _ in range(args.epochs):
        epoch(model, optimizer, batches, recompute)
    recompute_rate = len(pixels) * args.epochs / (time.perf_counter() - started)

    key = photos_key(photos) + str(args.image_size)
    _, build_s = common.timed(stem_outputs, pixels, key, model, processor, 0, device=device)
    cached = stem_outputs(pixels, key, model, processor, 0, device=device)  # read back from the Arrow cache
    cached = cached.to(device)

    def from_cache(index):
        return {"stem_output": cached[index.to(device)].float()}

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
    if args.precision_sweep:
        rows = precision_sweep(model, pixels, batches, processor, device, args.epochs)
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
