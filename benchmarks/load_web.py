"""Latency, throughput and memory of the selfie web page's API under load, and a soak.

    python benchmarks/load_web.py [--model runs/selfie/model.npz] [--requests 100] [--soak 1000]
    python benchmarks/load_web.py --server-args "--workers 2 --threads 1"     # other server settings

Starts examples/selfie_web.py (default settings unless --server-args) on a free loopback port
and sends two photos made from a held-out synthetic selfie pasted into a larger picture: a
1 MP JPEG (1280 x 800) and a 12 MP one (4000 x 3000). For each photo, 1 and 8 clients (each
sending its next request when the last is answered), alone and with a second process keeping
one core busy: p50 / p95 / p99 latency, photos per second, the server's peak memory (the
kernel's high-water mark of each server process, reset before each row), and whether every
answer equals what the command line
(selfie_rate.py, selfie_crop.py) gives for the same file. Then a soak on a fresh server: RSS
after 100 and after --soak requests of the 1 MP photo from 8 clients. Prints the tables and
the command to rerun them. Needs the web extra: pip install -e ".[web]".
"""
import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import selfie_crop  # noqa: E402
import selfie_rate  # noqa: E402
from crop_search import held_out_selfies, pasted  # noqa: E402


def photos(data, tmp):
    """{name: JPEG file} of the two test photos, written under ``tmp``."""
    rng = np.random.default_rng(7)
    selfie = Image.open(held_out_selfies(data)[0]).convert("RGB")
    out = {}
    for name, shape in (("1 MP", (1280, 800)), ("12 MP", (4000, 3000))):
        path = os.path.join(tmp, f"photo_{shape[0]}x{shape[1]}.jpg")
        pasted(selfie, rng, shape=shape)[0].save(path, quality=90)
        out[name] = path
    return out


def expected(path, model):
    """The command line's answer for an image file: P(good), crop box, crop P(good)."""
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            [(_, p)] = selfie_rate.main([path, "--model", model])
            box, best = selfie_crop.main([path, "--model", model, "--out", os.devnull])
        finally:
            sys.stdout = stdout
    return p, list(box), best


def agrees(body, want):
    p, box, best = want
    return abs(body["p_good"] - p) < 1e-6 and body["crop"] == box and abs(body["crop_p_good"] - best) < 1e-6


class Server:
    """examples/selfie_web.py in its own process on a free port; ``rss()`` of its process tree."""

    def __init__(self, model, extra=()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "..", "examples", "selfie_web.py"),
                                      "--model", model, "--port", str(port), *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"error: the server exited: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        self.stop()
        sys.exit("error: the server did not answer within 60 s")

    def _procs(self):
        procs = [psutil.Process(self.proc.pid)]
        return procs + procs[0].children(recursive=True)

    def rss(self):
        """MB resident in the server's processes now."""
        try:
            return sum(p.memory_info().rss for p in self._procs()) / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def reset_peak(self):
        """Start a new peak: each server process's high-water mark of resident memory (Linux's
        VmHWM) reset to what it holds now, through /proc/PID/clear_refs."""
        try:
            for p in self._procs():
                with open(f"/proc/{p.pid}/clear_refs", "w") as f:
                    f.write("5")
        except OSError as e:
            self.stop()
            sys.exit(f"error: cannot reset the server's peak memory ({e}); this benchmark reads "
                     "Linux's /proc/PID/clear_refs and VmHWM, as the server's own user")

    def peak(self):
        """MB: the server processes' peaks of resident memory since ``reset_peak``, summed (the
        kernel's own record, so nothing samples the server while it works: polling its process
        tree every 20 ms took 1.7 ms each time, 4% of this 2-core machine)."""
        total = 0
        for p in self._procs():
            with open(f"/proc/{p.pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return total / 1024

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def multipart(path):
    """(body, content type) of a multipart upload of the file at ``path``, encoded once."""
    boundary = uuid.uuid4().hex
    with open(path, "rb") as f:
        data = f.read()
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def burst(server, path, want, clients, requests):
    """``requests`` requests from ``clients`` clients: (latencies s, wall s, peak RSS MB,
    answers that equal the command line's, status codes)."""
    body, ctype = multipart(path)
    server.reset_peak()

    def client(n):
        out = []
        with httpx.Client(timeout=300) as c:
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post(server.url + "/api/rate", content=body, headers={"content-type": ctype})
                out.append((time.perf_counter() - t0, r.status_code, r.status_code == 200 and agrees(r.json(), want)))
        return out

    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for share in pool.map(client, shares) for r in share]
    wall = time.perf_counter() - t0
    codes = {}
    for _, code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    return np.array([r[0] for r in results]), wall, server.peak(), sum(r[2] for r in results), codes


def busy_process():
    """A second process keeping one core busy (a pure-Python loop)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--data", default="data/selfies", help="the synthetic selfies the model was trained on")
    ap.add_argument("--requests", type=int, default=100, help="requests per row (a third of it for 12 MP)")
    ap.add_argument("--soak", type=int, default=1000, help="requests of the soak (0: no soak)")
    ap.add_argument("--server-args", default="", help="extra options for selfie_web.py, quoted")
    ap.add_argument("--out", default="runs/load_web", help="where the test photos are written")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.model):
        sys.exit(f"error: no model at {args.model} (python examples/selfie_train.py trains one)")
    os.makedirs(args.out, exist_ok=True)
    files = photos(args.data, args.out)
    extra = shlex.split(args.server_args)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "unknown CPU")
    print(f"server: examples/selfie_web.py {' '.join(extra) or '(default settings)'}; "
          f"{len(os.sched_getaffinity(0))} cores, {cpu}")
    print("\n| photo | clients | second process busy | requests | p50 ms | p95 ms | p99 ms | photos/s | "
          "peak RSS MB | answers as the command line's |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    server = Server(args.model, extra)
    try:
        for name, path in files.items():
            want = expected(path, args.model)
            n = args.requests if name == "1 MP" else max(8, args.requests // 3)
            burst(server, path, want, 1, 3)                             # warm up
            for clients in (1, 8):
                for busy in (False, True):
                    other = busy_process() if busy else None
                    try:
                        lat, wall, peak, ok, codes = burst(server, path, want, clients, n)
                    finally:
                        if other is not None:
                            other.kill()
                            other.wait()
                    ms = np.percentile(lat * 1000, [50, 95, 99])
                    note = "" if set(codes) == {200} else f" (status {codes})"
                    print(f"| {name} | {clients} | {'yes' if busy else 'no'} | {n} | {ms[0]:.0f} | {ms[1]:.0f} | "
                          f"{ms[2]:.0f} | {n / wall:.1f} | {peak:.0f} | {ok} of {n}{note} |", flush=True)
    finally:
        server.stop()
    if args.soak:
        server = Server(args.model, extra)
        try:
            path = files["1 MP"]
            want = expected(path, args.model)
            first = burst(server, path, want, 8, 100)
            after_100 = server.rss()
            rest = burst(server, path, want, 8, args.soak - 100)
            after_all = server.rss()
        finally:
            server.stop()
        ok = first[3] + rest[3]
        print(f"\nsoak, 1 MP photo, 8 clients: RSS {after_100:.0f} MB after 100 requests, {after_all:.0f} MB after "
              f"{args.soak} ({100 * (after_all / after_100 - 1):+.1f}%); {ok} of {args.soak} answers as the "
              "command line's")
    print(f"\nrerun: python benchmarks/load_web.py --requests {args.requests} --soak {args.soak}"
          + (f" --server-args {shlex.quote(args.server_args)}" if args.server_args else ""))


if __name__ == "__main__":
    main()
