"""Serving under load: the app's requests/s against the bare prediction API's, and a burst of new clients.

    python benchmarks/serving.py --model outputs/fusion [--photo PHOTO] [--requests 60] [--clients 200]
    python benchmarks/serving.py --model outputs/fusion --backend onnx    # after python -m mm_classifier.export

1. The bare API: ``Predictor.predict`` on one photo and caption, one request after another, in this process.
2. The app: ``python app.py`` in a subprocess on 127.0.0.1, ``--threads`` clients each sending its share of
   ``--requests`` predictions (the photo uploaded each time): plain HTTP clients (Gradio's curl API), then
   gradio_client's. KEY RATIO = app requests/s / API's. On one machine the clients' CPU is taken from the
   app's: gradio_client spends more CPU per request than the server does, so the plain HTTP figure is the
   server's.
3. A burst: ``--clients`` new clients at once, each its own ``gradio_client.Client`` in its own thread; each
   should get a result or a clean "queue is full" within ``--timeout`` seconds, and none time out.

Loopback only; every phase is bounded in count and time; the server started here is stopped at the end.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a man and a dog on the grass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_rates(model: str, photo: str, requests: int, backend: str) -> dict[str, float]:
    """Requests/s of predict(photo file, caption), one call after another, with the backend's default threads and
    with one thread: the baseline is the faster of the two."""
    if backend == "onnx":
        from mm_classifier.onnx_runtime import OnnxPredictor

        predictors = {f"{threads or 'default'} onnxruntime thread(s)": OnnxPredictor.from_pretrained(model, threads)
                      for threads in (None, 1)}
    else:
        import torch
        import transformers

        from mm_classifier import Predictor

        transformers.utils.logging.disable_progress_bar()
        predictor = Predictor.from_pretrained(model)
        predictors = {f"{threads} torch thread(s)": (predictor, threads) for threads in (torch.get_num_threads(), 1)}
    rates = {}
    for name, predictor in predictors.items():
        if backend != "onnx":
            predictor, threads = predictor
            torch.set_num_threads(threads)
        for _ in range(3):
            predictor.predict(photo, CAPTION)
        started = time.perf_counter()
        for _ in range(requests):
            predictor.predict(photo, CAPTION)
        rates[name] = requests / (time.perf_counter() - started)
    return rates


def start_server(model: str, port: int, deadline: float, backend: str) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--model", model, "--server-name", "127.0.0.1",
         "--server-port", str(port), "--no-examples", "--backend", backend],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited with {server.returncode}: {server.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the app did not answer within the time limit")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used so far by a process (Linux /proc; this process's own with pid None)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def new_client(url: str, timeout: float):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": timeout})


def http_predict(http, url: str, photo: Path) -> dict:
    """One /predict through Gradio's plain HTTP API (as curl would): upload the photo, call, read the result."""
    uploaded = http.post(f"{url}gradio_api/upload", files={"files": (photo.name, photo.read_bytes())})
    uploaded.raise_for_status()
    data = [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}, CAPTION, 0]
    call = http.post(f"{url}gradio_api/call/predict", json={"data": data})
    call.raise_for_status()
    event = None
    with http.stream("GET", f"{url}gradio_api/call/predict/{call.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"the app answered with an error: {line}")
                return json.loads(line.removeprefix("data:"))[0]
    raise RuntimeError("the app's event stream ended without a result")


def app_rate(url: str, photo: str, requests: int, threads: int, timeout: float, gradio_client: bool
             ) -> tuple[float, Counter]:
    """Requests/s of the app's /predict with ``threads`` clients sending ``requests`` in all, each request
    uploading the photo: plain HTTP clients (one httpx connection each), or gradio_client Clients."""
    import httpx
    from gradio_client import handle_file

    if gradio_client:
        clients = [new_client(url, timeout) for _ in range(threads)]

        def send(client):
            client.submit(handle_file(photo), CAPTION, api_name="/predict").result(timeout=timeout)
    else:
        clients = [httpx.Client(timeout=timeout) for _ in range(threads)]

        def send(client):
            http_predict(client, url, Path(photo))

    for client in clients:  # warm-up: one request each
        send(client)
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def work(client, count):
        for _ in range(count):
            try:
                send(client)
                outcome = "result"
            except Exception as err:  # noqa: BLE001 (counted and reported, never hidden)
                outcome = f"error {type(err).__name__}"
            with lock:
                outcomes[outcome] += 1

    shares = [requests // threads + (i < requests % threads) for i in range(threads)]
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(c, n), daemon=True) for c, n in zip(clients, shares, strict=True)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=timeout * max(shares))
    return outcomes["result"] / (time.perf_counter() - started), outcomes


def burst(url: str, photo: str, clients: int, timeout: float) -> tuple[Counter, list[float]]:
    """``clients`` new clients at once; how each ended within ``timeout`` seconds, and the answers' latencies."""
    from gradio_client import handle_file

    outcomes: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients, timeout=120)

    def one():
        start.wait()
        began = time.monotonic()
        try:
            client = new_client(url, timeout)
            left = timeout - (time.monotonic() - began)
            client.submit(handle_file(photo), CAPTION, api_name="/predict").result(timeout=max(left, 0.1))
            outcome = "result"
        except Exception as err:  # noqa: BLE001
            text = f"{type(err).__name__}: {err}"
            if "queue is full" in text.lower():
                outcome = "queue full"
            elif "timeout" in text.lower() or "timed out" in text.lower() or isinstance(err, TimeoutError):
                outcome = "timeout"
            else:
                outcome = f"other ({text[:80]})"
        took = time.monotonic() - began
        if took > timeout and outcome in ("result", "queue full"):
            outcome = "timeout"  # answered, but too late
        with lock:
            outcomes[outcome] += 1
            latencies.append(took)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout + 60)
    missing = clients - sum(outcomes.values())
    if missing:
        outcomes["timeout"] += missing  # still waiting after the limit
    return outcomes, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/fusion")
    parser.add_argument("--photo", default=None, help="default: the built-in sample's first scene")
    parser.add_argument("--requests", type=int, default=60, help="requests for each requests/s measurement")
    parser.add_argument("--threads", type=int, default=4, help="clients sending the app's requests/s requests")
    parser.add_argument("--clients", type=int, default=200, help="new clients in the burst")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each burst client may take")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="the whole run stops by then")
    parser.add_argument("--backend", choices=("pytorch", "onnx"), default="pytorch",
                        help="onnx: the model's ONNX graphs (python -m mm_classifier.export MODEL first)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    threading.Timer(args.max_seconds, lambda: os._exit(3)).start()  # a hard stop, whatever hangs

    photo = args.photo
    if photo is None:
        from mm_classifier.sample import sample_folder

        photo = str(sorted((sample_folder() / "images").iterdir())[0])
    print(f"# Serving benchmark: {common.machine()}")
    print(f"model {args.model} ({args.backend}); photo {photo}")
    rates = api_rates(args.model, photo, args.requests, args.backend)
    api = max(rates.values())
    shown = ", ".join(f"{rate:.1f} with {threads}" for threads, rate in rates.items())
    print(f"bare API: {api:.1f} requests/s ({args.requests} sequential Predictor.predict calls each: {shown})")
    print(f"machine load (1-minute average) before the app starts: {os.getloadavg()[0]:.1f}")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(args.model, port, min(deadline, time.monotonic() + 180), args.backend)
    try:
        served = {}
        for kind in ("HTTP", "gradio_client"):
            server_cpu, client_cpu = cpu_seconds(server.pid), cpu_seconds()
            served[kind], outcomes = app_rate(url, photo, args.requests, args.threads, args.timeout,
                                              gradio_client=kind == "gradio_client")
            server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, cpu_seconds() - client_cpu
            per_request = args.requests + args.threads  # the warm-up requests included
            print(f"app, {args.threads} {kind} clients: {served[kind]:.1f} requests/s ({dict(outcomes)}); CPU per "
                  f"request: server {1000 * server_cpu / per_request:.0f} ms, clients "
                  f"{1000 * client_cpu / per_request:.0f} ms")
        print(f"KEY RATIO app/API requests/s: {served['HTTP'] / api:.2f}x with plain HTTP clients, "
              f"{served['gradio_client'] / api:.2f}x with gradio_client's (target >= 0.5; the clients share the "
              "machine's cores with the app)")

        outcomes, latencies = burst(url, photo, args.clients, args.timeout)
        counts = {key: outcomes.get(key, 0) for key in ("result", "queue full", "timeout")}
        others = {key: value for key, value in outcomes.items() if key not in counts}
        slowest = max(latencies) if latencies else float("nan")
        print(f"KEY BURST {args.clients} new clients at once: {counts['result']} results, {counts['queue full']} "
              f"queue full, {counts['timeout']} timeouts, {sum(others.values())} other errors; slowest ended after "
              f"{slowest:.1f} s (target: no timeouts, all within {args.timeout:.0f} s)")
        for key, value in others.items():
            print(f"  {value} x {key}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    sys.stdout.flush()
    # Clients whose requests were cut off may leave worker threads behind; the run is over, so do not wait on them.
    os._exit(0)


if __name__ == "__main__":
    main()
