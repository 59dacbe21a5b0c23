"""Explanation latency: ``Predictor.explain`` on one photo + caption against one plain ``Predictor.predict``.

    python benchmarks/explanation.py --model outputs/fusion [--dataset sample --split test] [--requests 40]

Each request takes the next photo of the split (a file path: both calls open and decode it) and its first caption.
Explain gives its default concepts (the predicted ones, or the top 3 when none is): per concept the three
probabilities, a Grad-CAM heat map and each word's contribution. After a warm-up, the two calls alternate, so they
share the machine's state; the script prints their median and 95th-percentile latencies and
KEY RATIO = median explanation / median prediction. Target (issue 20): at most 6x, and under 1 s, for the real-data
fusion model (MobileNetV2 at 224 px) on 2 CPU cores. Time it alone: another torch process on the cores skews it.
"""

import argparse
import time

import common
import numpy as np

WARM_UP = 3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/fusion", help="a saved model folder (default: %(default)s)")
    parser.add_argument("--dataset", default="sample", help="where the photos and captions come from")
    parser.add_argument("--split", default="test")
    parser.add_argument("--requests", type=int, default=40, help="timed requests of each kind")
    args = parser.parse_args()

    import datasets

    from mm_classifier import Predictor, load_photos

    predictor = Predictor.from_pretrained(args.model)
    photos = load_photos(args.dataset)[args.split]
    count = min(len(photos), args.requests + WARM_UP)
    undecoded = photos.select(range(count)).cast_column("image", datasets.Image(decode=False))
    inputs = [(row["image"]["path"], row["captions"][0]) for row in undecoded]

    predict_s, explain_s, explained = [], [], []
    for i in range(args.requests + WARM_UP):
        photo, caption = inputs[i % len(inputs)]
        _, plain = common.timed(predictor.predict, photo, caption)
        explanation, why = common.timed(predictor.explain, photo, caption)
        if i >= WARM_UP:
            predict_s.append(plain)
            explain_s.append(why)
            explained.append(len(explanation.concepts))

    predict_ms = np.percentile(np.asarray(predict_s) * 1000, [50, 95])
    explain_ms = np.percentile(np.asarray(explain_s) * 1000, [50, 95])
    config = predictor.model.config
    print(f"{args.model}: {config.modality} model, {config.backbone} at {config.image_size} px, "
          f"{len(predictor.concepts)} concepts; {args.requests} requests from {args.dataset} {args.split}, "
          f"on {common.machine()}, {time.strftime('%Y-%m-%d')}\n")
    print(common.table(
        ["call", "median (ms)", "p95 (ms)"],
        [("predict (photo + caption)", f"{predict_ms[0]:.0f}", f"{predict_ms[1]:.0f}"),
         (f"explain ({np.mean(explained):.1f} concepts on average)", f"{explain_ms[0]:.0f}", f"{explain_ms[1]:.0f}")],
    ))
    ratio = explain_ms[0] / predict_ms[0]
    print(f"\nKEY RATIO: an explanation takes {ratio:.1f}x one prediction ({explain_ms[0]:.0f} ms median; "
          "target <= 6x and under 1 s)")


if __name__ == "__main__":
    main()
