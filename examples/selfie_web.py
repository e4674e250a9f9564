"""A selfie rater web page: drop in a photo, see P(good), its rank among the held-out selfies,
the best square crop and what the net looks at. Needs the web extra: pip install -e ".[web]".

    python examples/selfie_web.py [--model runs/selfie/model.npz] [--host 127.0.0.1] [--port 8000]

Then open http://127.0.0.1:8000/. The API: POST /api/rate (multipart field "image") returns
{"p_good", "verdict", "percentile", "crop": [x, y, size], ...}; GET /api/health names the model.
"""
import argparse
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-upload-mb", type=float, default=10, help="largest upload accepted")
    args = ap.parse_args(argv)
    try:
        import uvicorn

        from lib.web import create_app
    except ImportError as e:
        sys.exit(f"error: the web page needs the web extra ({e.name} is missing): pip install -e \".[web]\"")
    app = create_app(args.model, max_upload=int(args.max_upload_mb * 2**20))
    print(f"serving {args.model} on http://{args.host}:{args.port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
