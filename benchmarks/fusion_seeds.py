"""How far the fusion model's margin over the text-only model moves with the fusion stage's own training seed.

    python benchmarks/fusion_seeds.py RUN_DIR [RUN_DIR ...] --seeds 10 11 12 [-- --fusion-type gated]

Each RUN_DIR is the output folder of a finished three-stage `python train.py` run (image/, text/, fusion/). For
each seed, the run's image-only and text-only models are copied into a new folder, and `train.py
--resume-from-checkpoint latest` trains only the fusion stage again on them: with the run's own arguments (from
its training_args.json, which records them as given), on the run's split (`--split-seed`), with `--seed` set to
the new seed. The data, the split and both single-modality models stay the same; only the fusion stage's
initialisation, dropout draws and batch order change. The run's own seed reproduces the run's fusion model.
Arguments after `--` go to train.py after the run's own, so they override them (to compare a setting of the fusion
stage on the same models).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]


def train_command(run_args: dict, seed: int, output_dir: Path) -> list[str]:
    """A train.py command line that repeats the run's fusion stage with another training seed.

    The run's own arguments come first (train.py records them as ``argv``); the options after them win.
    """
    if "argv" not in run_args:
        raise SystemExit("error: this run's training_args.json has no 'argv': train it again with today's train.py")
    return [sys.executable, "train.py", *run_args["argv"], "--output-dir", str(output_dir),
            "--resume-from-checkpoint", "latest", "--skip-report", "--seed", str(seed),
            "--split-seed", str(run_args["split_seed"]), "--epochs", str(run_args["stage_epochs"]["fusion"])]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", help="output folders of finished three-stage runs")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds of the fusion stage")
    parser.add_argument("--output-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--target", type=float, default=0.02, help="the margin to count runs against")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # extra: train.py arguments, after --

    output = args.output_dir or Path(tempfile.mkdtemp(prefix="mm_fusion_seeds_"))
    rows, margins = [], []
    for run_dir in args.run_dirs:
        run_args = json.loads((run_dir / "fusion" / "training_args.json").read_text())
        text = json.loads((run_dir / "text" / "all_results.json").read_text())
        for seed in args.seeds:
            folder = output / f"{run_dir.name}-seed{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            for stage in ("image", "text"):
                shutil.copytree(run_dir / stage, folder / stage)
            command = train_command(run_args, seed, folder) + extra
            print("$", " ".join(command), flush=True)
            subprocess.run(command, cwd=ROOT, check=True)
            fusion = json.loads((folder / "fusion" / "all_results.json").read_text())
            margin = fusion["test_micro_f1"] - text["test_micro_f1"]
            margins.append(margin)
            rows.append((run_dir.name, run_args.get("split_seed", run_args["seed"]), seed,
                         f"{fusion['validation_micro_f1']:.3f}", f"{fusion['test_micro_f1']:.3f}",
                         f"{fusion['test_mAP']:.3f}", f"{text['test_micro_f1']:.3f}", f"{margin:+.3f}"))
    print(f"\nfusion stage retrained on {common.machine()}\n")
    print(common.table(["run", "split seed", "fusion seed", "validation micro-F1", "test micro-F1", "test mAP",
                        "text-only micro-F1", "margin"], rows))
    spread = statistics.stdev(margins) if len(margins) > 1 else 0.0
    reached = sum(m >= args.target for m in margins)
    print(f"\nKEY RATIO: margin over text-only {statistics.mean(margins):+.4f} on average (sd {spread:.4f}, "
          f"{min(margins):+.3f} to {max(margins):+.3f}); {reached} of {len(margins)} runs reach +{args.target}; "
          f"models in {output}")


if __name__ == "__main__":
    main()
