"""Inference: prediction-API latency vs a bare forward, batch throughput, channels_last vs contiguous.

    python benchmarks/inference.py --model outputs/fusion [--requests 1000]
    python benchmarks/inference.py --model DIR --dataset PATH/TO/flickr8k --split validation
"""

import argparse
import time

import common  # noqa: F401
import numpy as np
import torch


def percentiles(samples):
    return np.percentile(np.asarray(samples) * 1000, [50, 95])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="outputs/fusion")
    parser.add_argument("--dataset", default="sample", help="where the test photos come from")
    parser.add_argument("--split", default="test", help="split the photos come from")
    parser.add_argument("--requests", type=int, default=1000,
                        help="single requests timed (default: %(default)s; the p50 of fewer drifts with the machine)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from mm_classifier import Predictor, load_flickr8k

    torch.set_num_threads(torch.get_num_threads())
    predictor = Predictor.from_pretrained(args.model)
    model, processor = predictor.model, predictor.processor
    test = load_flickr8k(args.dataset)[args.split]
    undecoded = test.cast_column("image", test.features["image"].__class__(decode=False))
    paths = [v["path"] for v in undecoded.select(range(min(args.batch_size, len(test))))["image"]]
    captions = [c[0] for c in test.select(range(len(paths)))["captions"]]

    # The forward inside each API call, timed by hooks: what the API adds is the rest of the call.
    forward_start, inner = [], []
    model.register_forward_pre_hook(lambda *_: forward_start.append(time.perf_counter()))
    model.register_forward_hook(lambda *_: inner.append(time.perf_counter() - forward_start[-1]))
    api, bare, outside, processor_after_forward = [], [], [], []
    for i in range(args.requests + 5):
        path, caption = paths[i % len(paths)], captions[i % len(paths)]
        started = time.perf_counter()
        predictor.predict(path, caption)
        api_s = time.perf_counter() - started
        outside_s = api_s - inner[-1]
        started = time.perf_counter()
        batch = processor(images=path, text=caption)
        processor_s = time.perf_counter() - started
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            started = time.perf_counter()
            model(**batch)
            bare_s = time.perf_counter() - started
        if i >= 5:  # warm-up
            api.append(api_s)
            bare.append(bare_s)
            outside.append(outside_s)
            processor_after_forward.append(processor_s)
    processor_in_a_loop = []
    for i in range(args.requests):  # the same calls back to back: its code and data stay in the caches
        started = time.perf_counter()
        processor(images=paths[i % len(paths)], text=captions[i % len(paths)])
        processor_in_a_loop.append(time.perf_counter() - started)
    api_p50, api_p95 = percentiles(api)
    bare_p50, bare_p95 = percentiles(bare)

    def throughput(memory_format, repeats=3):
        if model.image_encoder is not None:
            model.to(memory_format=memory_format)
        batch = processor(images=paths, text=captions)
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=memory_format)
        with torch.inference_mode():
            model(**batch)
            started = time.perf_counter()
            for _ in range(repeats):
                model(**batch)
        return len(paths) * repeats / (time.perf_counter() - started)

    contiguous = throughput(torch.contiguous_format)
    channels_last = throughput(torch.channels_last)
    started = time.perf_counter()
    predictor.predict(paths, captions)
    api_batch = len(paths) / (time.perf_counter() - started)

    print(f"\n{args.model} ({model.config.modality}, {model.config.backbone} at {model.config.image_size} px) "
          f"on {common.machine()}\n")
    print(common.table(["measure", "value"], [
        ("prediction API, one photo + caption: p50 / p95 ms", f"{api_p50:.1f} / {api_p95:.1f}"),
        ("bare forward on preprocessed tensors: p50 / p95 ms", f"{bare_p50:.1f} / {bare_p95:.1f}"),
        ("prediction API outside its forward (preprocessing, probabilities, results): p50 ms",
         f"{percentiles(outside)[0]:.2f}"),
        ("the processor alone (one photo + caption), right after a prediction / back to back: p50 ms",
         f"{percentiles(processor_after_forward)[0]:.2f} / {percentiles(processor_in_a_loop)[0]:.2f}"),
        (f"prediction API, batch of {len(paths)}: photos/s", f"{api_batch:.0f}"),
        (f"bare forward, batch of {len(paths)}, contiguous: photos/s", f"{contiguous:.0f}"),
        (f"bare forward, batch of {len(paths)}, channels_last: photos/s", f"{channels_last:.0f}"),
        ("peak RSS of this process (the app's serving path)", f"{common.peak_rss_mib():.0f} MiB"),
    ]))
    print(f"KEY RATIO: API overhead {api_p50 / bare_p50:.2f}x a bare forward (p50); "
          f"channels_last {channels_last / contiguous:.2f}x contiguous")


if __name__ == "__main__":
    main()
