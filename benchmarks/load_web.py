"""A bounded burst of requests against the selfie web page's API, from several clients at once.

    python benchmarks/load_web.py [--model runs/selfie/model.npz] [--requests 200] [--clients 8]
    python benchmarks/load_web.py --url http://127.0.0.1:8000 IMAGE ...

Without --url it starts examples/selfie_web.py on a free loopback port (its own process) and
stops it at the end. Each image is rated once alone first; every answer of the burst must give
that same P(good). Reports successes, status codes, p50/p95/max latency, requests per second and
the server's peak memory (from /api/health). Needs the web extra: pip install -e ".[web]".
"""
import argparse
import glob
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def start_server(model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "selfie_web.py"), "--model", model,
                             "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with status {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("error: the server did not answer within 60 s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", help="images to send (default: 8 of data/selfies/)")
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--url", help="a running server (default: start one)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args(argv)
    paths = args.images or sorted(glob.glob("data/selfies/selfie_*.png"))[:8]
    if not paths:
        sys.exit("error: no images given and none in data/selfies/ (run examples/selfie_train.py first)")
    images = [open(p, "rb").read() for p in paths]
    proc, url = (None, args.url) if args.url else start_server(args.model)
    try:
        post = lambda data: httpx.post(url + "/api/rate", files={"image": ("selfie.png", data)}, timeout=300)
        want = [post(im).json()["p_good"] for im in images]          # each image alone, first

        def one(i):
            t0 = time.perf_counter()
            try:
                r = post(images[i % len(images)])
                ok = r.status_code == 200 and abs(r.json()["p_good"] - want[i % len(images)]) < 1e-6
                return r.status_code, ok, time.perf_counter() - t0
            except httpx.HTTPError as e:
                return type(e).__name__, False, time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        health = httpx.get(url + "/api/health").json()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    lat = np.array([r[2] for r in results]) * 1000
    codes = {}
    for r in results:
        codes[r[0]] = codes.get(r[0], 0) + 1
    correct = sum(r[1] for r in results)
    print(f"{args.requests} requests from {args.clients} clients, {len(images)} images: "
          f"{correct} answered correctly; status codes {codes}")
    print(f"latency p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
          f"max {lat.max():.0f} ms; {args.requests / wall:.1f} requests/s over {wall:.1f} s")
    print(f"server peak memory (max RSS): {health['peak_rss_mb']:.0f} MB")
    return correct == args.requests


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
