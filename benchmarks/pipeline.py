"""The whole training pipeline (image-only, text-only, fusion) timed end to end, checked against its targets.

    python benchmarks/pipeline.py                                   # the built-in sample, default settings
    python benchmarks/pipeline.py --dataset ../shared/flickr8k -- --backbone-weights W --backbone-pad-type same \
        --image-mean 0.5 0.5 0.5 --image-std 0.5 0.5 0.5
Arguments after `--` go to train.py unchanged.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {  # dataset kind -> (minutes, fusion micro-F1, fusion mAP, gap over the better single model)
    "sample": (5, 0.90, None, 0.05),
    "flickr8k": (30, 0.74, 0.70, 0.02),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--output-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("train_args", nargs="*", help="extra train.py arguments (after --)")
    args = parser.parse_args()

    output = args.output_dir or Path(tempfile.mkdtemp(prefix="mm_pipeline_"))
    command = [sys.executable, "train.py", "--dataset", args.dataset, "--output-dir", str(output), *args.train_args]
    print("$", " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    minutes = (time.perf_counter() - started) / 60

    results = {s: json.loads((output / s / "all_results.json").read_text()) for s in ("image", "text", "fusion")}
    rows = [
        (stage, f"{r['test_micro_f1']:.3f}", f"{r['test_macro_f1']:.3f}", f"{r['test_mAP']:.3f}",
         f"{r['test_roc_auc']:.3f}", r["best_epoch"], f"{r['stage_seconds'] / 60:.1f}")
        for stage, r in results.items()
    ]
    print(f"\n{args.dataset} on {common.machine()}; whole run {minutes:.1f} min; "
          f"peak RSS of the training process {common.peak_rss_mib(children=True):.0f} MiB\n")
    print(common.table(["model", "micro-F1", "macro-F1", "mAP", "ROC-AUC", "best epoch", "minutes"], rows))
    fusion = results["fusion"]
    best_single = max(results["image"]["test_micro_f1"], results["text"]["test_micro_f1"])
    gap = fusion["test_micro_f1"] - best_single
    max_minutes, min_f1, min_map, min_gap = TARGETS["sample" if args.dataset == "sample" else "flickr8k"]
    checks = [
        (f"whole run under {max_minutes} min", minutes < max_minutes),
        (f"fusion micro-F1 >= {min_f1}", fusion["test_micro_f1"] >= min_f1),
        (f"fusion beats the better single-modality model by >= {min_gap}", gap >= min_gap),
    ]
    if min_map is not None:
        checks.append((f"fusion mAP >= {min_map}", fusion["test_mAP"] >= min_map))
    for name, ok in checks:
        print(f"- [{'x' if ok else ' '}] {name}")
    print(f"KEY RATIO: fusion micro-F1 {fusion['test_micro_f1']:.3f} vs best single model {best_single:.3f} "
          f"(+{gap:.3f}) in {minutes:.1f} min; models and report in {output}")


if __name__ == "__main__":
    main()
