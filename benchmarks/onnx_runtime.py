"""The ONNX runtime against PyTorch: parity, int8's accuracy cost, latency, throughput, memory and start-up.

    python benchmarks/onnx_runtime.py --model outputs/fusion [--dataset sample] [--space-install]
    python benchmarks/onnx_runtime.py --model DIR --dataset PATH/TO/flickr8k  # the real-data model

1. Parity: the largest difference between ONNX (fp32, and int8) and PyTorch probabilities on the test split's first
   32 photos and captions: photo only, caption only and both, batch 1 and batch 32.
2. int8's cost: micro-F1 and mAP of the PyTorch model, the fp32 graphs and the int8 graphs on the whole report
   split (the test split; the validation split of a copy whose test photos are withheld, as train.py reports),
   each photo encoded once as evaluation does, with the model's own thresholds; the graphs' sizes.
3. Speed, this process, each backend with its default threads and with one: one photo file + caption per request
   (p50, p95) and batch-32 throughput. KEY RATIO = PyTorch p50 / ONNX p50, each at its best thread count.
4. Footprint, each in a new process: a script that loads the model and labels one photo + caption (time from
   process start to its answer, peak RSS), and ``python app.py`` serving 20 predictions (peak RSS, VmHWM).
5. With --space-install: the Space's virtual environment (python -m mm_classifier.space, pip install), its size.
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import common
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a man and a dog on the grass"


def test_inputs(model_dir: str, dataset: str, seed: int):
    """The report split's name and labelled pairs for the model, and its first 32 photo files and captions."""
    from mm_classifier.data import load_photos
    from mm_classifier.evaluation import label_pairs, readable_pairs
    from mm_classifier.predict import Predictor

    config = Predictor.from_pretrained(model_dir).config
    photos = load_photos(dataset, seed=seed)
    # A copy whose test photos are withheld (real Flickr8k here) reports on its validation photos, as train.py does.
    split = "test" if len(photos["test"]) else "validation"
    pairs, _ = readable_pairs(label_pairs(config, photos[split]))
    undecoded = pairs.cast_column("image", pairs.features["image"].__class__(decode=False))
    first = undecoded.select(range(32))
    return split, pairs, [image["path"] for image in first["image"]], list(first["caption"])


def largest_differences(reference, candidate, photos, captions) -> dict[str, float]:
    config = reference.config
    cases = {"photo only": (photos, None), "caption only": (None, captions), "both": (photos, captions)}
    found = {}
    for name, (images, texts) in cases.items():
        if (images is not None and not config.uses_image) or (texts is not None and not config.uses_text):
            continue
        for size in (1, 32):
            args = [None if x is None else x[:size] for x in (images, texts)]
            expected = reference.probability_rows(*args)
            found[f"{name}, batch {size}"] = float(np.abs(candidate.probability_rows(*args) - expected).max())
    return found


def onnx_scores(predictor, pairs) -> np.ndarray:
    """Probabilities of an OnnxPredictor for pair rows, each photo encoded once (as evaluation.score_pairs)."""
    from mm_classifier.evaluation import first_rows
    from mm_classifier.tokens import encode_captions

    config, sessions = predictor.config, predictor.sessions
    feeds = {}
    if config.uses_image:
        first = first_rows(pairs)
        undecoded = pairs.cast_column("image", pairs.features["image"].__class__(decode=False))
        ids = list(first)
        embeds = []
        for start in range(0, len(ids), 32):
            images = [image["path"] or image["bytes"] for image in
                      undecoded.select([first[i] for i in ids[start:start + 32]])["image"]]
            embeds.append(sessions["image"].run(None, {"pixel_values": predictor.pixel_values(images)})[0])
        per_photo = np.concatenate(embeds)
        position = {image_id: i for i, image_id in enumerate(ids)}
        feeds["image_embeds"] = per_photo[[position[i] for i in pairs["image_id"]]]
    if config.uses_text:
        captions, embeds = list(pairs["caption"]), []
        for start in range(0, len(captions), 256):
            ids, mask = encode_captions(predictor.encoder, captions[start:start + 256])
            embeds.append(sessions["text"].run(None, {"input_ids": ids, "attention_mask": mask})[0])
        feeds["text_embeds"] = np.concatenate(embeds)
    return sessions["classifier"].run(["probabilities"], feeds)[0]


def accuracy(probabilities, pairs, config) -> dict[str, float]:
    from mm_classifier.metrics import compute_metrics
    from mm_classifier.pairs import multi_hot

    targets = multi_hot(list(pairs["labels"]), config.num_labels)
    metrics = compute_metrics(probabilities, targets, None if config.single_label else config.thresholds,
                              config.concepts, single_label=config.single_label)
    return {"micro-F1": metrics["micro_f1"], "mAP": metrics["mAP"]}


def latency(predictor, photo, caption, requests: int = 100):
    for _ in range(5):
        predictor.predict(photo, caption)
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        predictor.predict(photo, caption)
        samples.append(time.perf_counter() - started)
    return np.percentile(np.asarray(samples) * 1000, [50, 95])


def throughput(predictor, photos, captions, rounds: int = 5) -> float:
    predictor.predict(photos, captions)
    started = time.perf_counter()
    for _ in range(rounds):
        predictor.predict(photos, captions)
    return rounds * len(photos) / (time.perf_counter() - started)


# The peak is the kernel's VmHWM: ru_maxrss would count the benchmark's own memory, inherited through fork.
FIRST_ANSWER = """
import sys
from mm_classifier import Predictor
predictor = Predictor.from_pretrained(sys.argv[1], backend=sys.argv[2])
predictor.predict(sys.argv[3], "a man and a dog on the grass")
status = open("/proc/self/status").read().splitlines()
print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024)
"""


def first_answer(model: str, backend: str, photo: str) -> tuple[float, float]:
    """(seconds from process start to the answer, peak RSS in MiB) of a script that labels one photo + caption."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FIRST_ANSWER, model, backend, photo], capture_output=True, text=True,
                         check=True).stdout
    return time.perf_counter() - started, float(out)


def app_peak_rss(model: str, backend: str, photo: str, requests: int = 20) -> float:
    """Peak RSS (MiB, the kernel's VmHWM) of ``python app.py --backend`` after ``requests`` predictions."""
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--backend", backend,
                               "--server-port", str(port), "--no-examples"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for _ in range(requests):
            client.predict(handle_file(photo), CAPTION, api_name="/predict")
        status = Path(f"/proc/{server.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
    finally:
        server.terminate()
        server.wait(timeout=60)


def space_install(model: str, folder: Path) -> float:
    """GiB of the Space's virtual environment after installing its requirements."""
    from mm_classifier.space import build_space

    space = build_space(model, folder / "space")
    venv.create(folder / "venv", with_pip=True)
    subprocess.run([folder / "venv" / "bin" / "python", "-m", "pip", "install", "-q", "-r",
                    space / "requirements.txt"], check=True)
    return sum(p.stat().st_size for p in (folder / "venv").rglob("*") if p.is_file()) / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/fusion")
    parser.add_argument("--dataset", default="sample", help="where the test split comes from (the model's data)")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (train.py's --seed)")
    parser.add_argument("--space-install", action="store_true", help="also install the Space (needs PyPI)")
    args = parser.parse_args()

    from mm_classifier.export import export
    from mm_classifier.onnx_runtime import OnnxPredictor
    from mm_classifier.predict import Predictor

    print(f"# ONNX runtime against PyTorch: {args.model} ({common.machine()})\n")
    work = Path(tempfile.mkdtemp(prefix="onnx_benchmark_"))
    fp32_dir, int8_dir = export(args.model, work / "fp32"), export(args.model, work / "int8", "int8")
    torch_predictor = Predictor.from_pretrained(args.model)
    fp32, int8 = OnnxPredictor.from_pretrained(fp32_dir), OnnxPredictor.from_pretrained(int8_dir)
    split, pairs, photos, captions = test_inputs(args.model, args.dataset, args.seed)
    sizes = {name: sum(p.stat().st_size for p in (folder / "onnx").glob("*.onnx")) / 2**20
             for name, folder in (("fp32", fp32_dir), ("int8", int8_dir))}
    print(f"graphs: fp32 {sizes['fp32']:.1f} MiB, int8 {sizes['int8']:.1f} MiB\n")

    parity = {"fp32": largest_differences(torch_predictor, fp32, photos, captions),
              "int8": largest_differences(torch_predictor, int8, photos, captions)}
    print(common.table(["largest |Δ probability| vs PyTorch", *parity["fp32"]],
                       [[name, *(f"{v:.1e}" for v in found.values())] for name, found in parity.items()]))
    print(f"\nKEY RATIO fp32 ONNX parity: max |Δ probability| = {max(parity['fp32'].values()):.1e} (target 1e-4)\n")

    from mm_classifier.evaluation import score_pairs

    config = torch_predictor.config
    scores = {"PyTorch": score_pairs(torch_predictor, pairs)["both"], "ONNX fp32": onnx_scores(fp32, pairs),
              "ONNX int8": onnx_scores(int8, pairs)}
    quality = {name: accuracy(p, pairs, config) for name, p in scores.items()}
    print(common.table([f"{split} split ({len(pairs)} pairs)", "micro-F1", "mAP"],
                       [[name, f"{q['micro-F1']:.4f}", f"{q['mAP']:.4f}"] for name, q in quality.items()]))
    change = {k: quality["ONNX int8"][k] - quality["PyTorch"][k] for k in ("micro-F1", "mAP")}
    print(f"\nKEY RATIO int8 change: micro-F1 {change['micro-F1']:+.4f}, mAP {change['mAP']:+.4f} "
          "(target: within 0.005 micro-F1)\n")

    photo, caption = photos[0], captions[0]
    import torch

    threads = torch.get_num_threads()
    timings, rates = {}, {}
    for count in (threads, 1):  # one input is often faster on one thread; each backend is taken at its best
        torch.set_num_threads(count)
        onnx = {"fp32": OnnxPredictor.from_pretrained(fp32_dir, count), "int8": OnnxPredictor.from_pretrained(
            int8_dir, count)}
        for name, predictor in (("PyTorch", torch_predictor), ("ONNX fp32", onnx["fp32"]),
                                ("ONNX int8", onnx["int8"])):
            timings[name, count] = latency(predictor, photo, caption)
            rates[name, count] = throughput(predictor, photos, captions)
    torch.set_num_threads(threads)
    print(common.table(["backend", "threads", "p50 ms (1 photo + caption)", "p95 ms", "batch-32 inputs/s"],
                       [[name, count, f"{t[0]:.1f}", f"{t[1]:.1f}", f"{rates[name, count]:.0f}"]
                        for (name, count), t in timings.items()]))

    def best_p50(name):
        return min(t[0] for (key, _), t in timings.items() if key == name)

    def best_rate(name):
        return max(rate for (key, _), rate in rates.items() if key == name)

    print(f"\nKEY RATIO p50 latency, each at its best thread count: PyTorch / ONNX fp32 = "
          f"{best_p50('PyTorch') / best_p50('ONNX fp32'):.2f}x (target 1.5x); batch-32 ONNX fp32 / PyTorch = "
          f"{best_rate('ONNX fp32') / best_rate('PyTorch'):.2f}x\n")

    del torch_predictor, fp32, int8, onnx
    starts = {"PyTorch": first_answer(args.model, "pytorch", photo), "ONNX fp32": first_answer(str(fp32_dir), "onnx",
                                                                                              photo)}
    apps = {"PyTorch": app_peak_rss(args.model, "pytorch", photo), "ONNX fp32": app_peak_rss(str(fp32_dir), "onnx",
                                                                                           photo)}
    print(common.table(["backend", "script: start to answer s", "script peak RSS MiB", "app peak RSS MiB (20 "
                        "predictions)"], [[name, f"{s[0]:.2f}", f"{s[1]:.0f}", f"{apps[name]:.0f}"]
                                          for name, s in starts.items()]))
    print(f"\nKEY RATIO start to first answer: ONNX {starts['ONNX fp32'][0]:.2f} s (target 3 s), PyTorch "
          f"{starts['PyTorch'][0]:.2f} s; app peak RSS ONNX {apps['ONNX fp32'] / 1024:.2f} GiB (target 0.5), PyTorch "
          f"{apps['PyTorch'] / 1024:.2f} GiB")
    if args.space_install:
        size = space_install(args.model, work)
        print(f"KEY RATIO Space install: {size:.2f} GiB (target under 1 GB)")
    print(json.dumps({"parity": parity, "quality": quality,
                      "p50_ms": {f"{name}, {count} threads": v[0] for (name, count), v in timings.items()},
                      "inputs_per_s": {f"{name}, {count} threads": v for (name, count), v in rates.items()},
                      "first_answer": starts, "app_peak_rss_mib": apps}))


if __name__ == "__main__":
    main()
