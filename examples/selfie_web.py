"""A selfie rater web page: drop in a photo, see P(good), its rank among the held-out selfies,
the best square crop and what the net looks at. Needs the web extra: pip install -e ".[web]".

    python examples/selfie_web.py [--model runs/selfie/model.npz] [--host 127.0.0.1] [--port 8000]
    python examples/selfie_web.py --workers 2 --threads 1      # two processes, one model thread each

Then open http://127.0.0.1:8000/. The API: POST /api/rate (multipart field "image") returns
{"p_good", "verdict", "percentile", "crop": [x, y, size], ...}; with ?explain=1 also the best
crop and the saliency map as PNG data URLs; GET /api/health names the model. docs/web.md
has the whole API, the limits, and the latency and memory measured with benchmarks/load_web.py.
"""
import argparse
import json
import os
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1, help="server processes, each with the model loaded "
                    "(about 190 MB each, docs/web.md)")
    ap.add_argument("--threads", type=int, default=None, help="model threads per process (default: one per "
                    "core this process may use, divided among the workers)")
    ap.add_argument("--queue", type=int, default=16, help="requests that may wait for a model thread; "
                    "past that the answer is 503 with Retry-After")
    ap.add_argument("--max-upload-mb", type=float, default=10, help="largest upload accepted")
    ap.add_argument("--header-timeout", type=float, default=10, help="seconds a client has to send a request head")
    ap.add_argument("--body-timeout", type=float, default=60, help="seconds a client has to send a photo")
    args = ap.parse_args(argv)
    for name in ("workers", "queue", "max_upload_mb", "header_timeout", "body_timeout") + \
            (("threads",) if args.threads is not None else ()):
        if getattr(args, name) < (0 if name == "queue" else 1e-9):
            ap.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'queue' else '> 0'}")
    try:
        import uvicorn

        from lib import web
    except ImportError as e:
        sys.exit(f"error: the web page needs the web extra ({e.name} is missing): pip install -e \".[web]\"")
    if not os.path.isfile(args.model):
        from lib.selfie_model import load_model
        load_model(args.model)                                       # exits saying how to train one
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or max(1, cores // args.workers)
    settings = {"model_path": args.model, "max_upload": int(args.max_upload_mb * 2**20), "threads": threads,
                "queue": args.queue, "body_timeout": args.body_timeout,
                "kernel_threads": max(1, cores // (args.workers * threads))}
    os.environ["SELFIE_WEB_SETTINGS"] = json.dumps(settings)
    config = web.server_config("lib.web:app_from_env", args.header_timeout, factory=True, host=args.host,
                               port=args.port, workers=args.workers, log_level="warning")
    print(f"serving {args.model} on http://{args.host}:{args.port}/  ({args.workers} process(es) x {threads} "
          f"model thread(s); Ctrl-C stops)", flush=True)
    if args.workers > 1:
        from uvicorn.supervisors import Multiprocess
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
