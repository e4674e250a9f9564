"""Rate selfies with a trained model, like the post's bot: P(good) and a one-line verdict each.

    python examples/selfie_rate.py IMAGE [IMAGE ...] [--model runs/selfie/model.npz]
    python examples/selfie_rate.py DIR [--out runs/selfie/ranking]     # rank a whole folder
    python examples/selfie_rate.py DIR --scheduler local:2              # ... on a local Dask cluster

With a folder or more than one image it also ranks them: OUT.csv (rank, path, P(good), verdict,
best first) and OUT.png (a best-to-worst grid), OUT defaulting to ``ranking_<name>`` beside the
model. Images in a folder that do not decode are skipped and counted; a named file that does
not decode is reported and makes the exit status 1. A folder is rated in shards of images
(lib/shards.py): in this process, or with --scheduler local:N / tcp://host:port on Dask workers,
with the same results.
"""
import argparse
import csv
import os
import sys

import numpy as np

from convlib.data import list_images, load_images
from convlib.io import atomic_file
from lib import plots, shards
from lib.selfie_model import load_model, open_image, p_good, prepare, trained_on_synthetic, verdict


def rank(paths, model_path, scheduler="none", progress=True):
    """[(path, P(good))] of the images that decode, best first, rated in shards on ``scheduler``."""
    kept, p = shards.map_shards(shards.rate, paths, model_path, scheduler=scheduler, desc="rating", progress=progress)
    order = np.argsort(-p, kind="stable")
    return [(paths[kept[i]], float(p[i])) for i in order]


def write_ranking(ranked, meta, out, title):
    """OUT.csv and OUT.png for ``ranked`` [(path, p)] best first (the picture shows up to 80 of
    them, evenly spaced, decoded again at the model's size)."""
    with atomic_file(out + ".csv", ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "path", "p_good", "verdict"])
        for i, (path, p) in enumerate(ranked, 1):
            w.writerow([i, path, f"{p:.4f}", verdict(p)])
    picks = np.linspace(0, len(ranked) - 1, min(len(ranked), 80)).astype(int)
    images, _ = load_images([ranked[i][0] for i in picks], meta["size"], meta["fit"], progress=False)
    plots.save_png(plots.grid(images, 10, [f"#{i + 1} {ranked[i][1]:.2f}" for i in picks], cell=80,
                              title=[title, "caption: rank and P(good); best top left, worst bottom right"
                                     + (f" ({len(picks)} of {len(ranked)}, evenly spaced)" if len(picks) < len(ranked)
                                        else "")]), out + ".png")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files, or folders (every image directly inside is rated)")
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--out", help="ranking files prefix (default: ranking_<name> next to the model)")
    ap.add_argument("--scheduler", default="none", help="where a folder is rated: none (this process), "
                    "local:N (a local Dask cluster of N workers) or tcp://host:port (an existing one)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        shards.check_scheduler(args.scheduler)
    except ValueError as e:
        ap.error(str(e))
    net, meta = load_model(args.model)
    folders = [a for a in args.images if os.path.isdir(a)]
    files = [a for a in args.images if not os.path.isdir(a)]
    failed = []
    for path in files:                                               # named files: say what is wrong with each
        try:
            open_image(path)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append(path)
    good_files = [f for f in files if f not in failed]
    if len(args.images) == 1 and not folders:                        # one image: just its verdict
        results = []
        if not failed:
            p = float(p_good(net, prepare([open_image(files[0])], meta))[0])
            results = [(files[0], p)]
            print(f"{files[0]}: P(good) = {p:.3f}  {verdict(p)}")
        if failed:
            sys.exit(1)
        return results
    paths = [p for d in folders for p in list_images(d)] + good_files
    ranked = rank(paths, args.model, args.scheduler, progress=not args.no_progress)
    if len(ranked) <= 20:
        for path, p in ranked:
            print(f"{path}: P(good) = {p:.3f}  {verdict(p)}")
    if ranked:
        name = os.path.basename(os.path.normpath(folders[0])) if folders else "images"
        out = args.out or os.path.join(os.path.dirname(args.model), f"ranking_{name}")
        write_ranking(ranked, meta, out, f"{len(ranked)} images from {', '.join(folders) or 'the command line'}, "
                                           "best to worst" + (" (model trained on synthetic selfies)"
                                                              if trained_on_synthetic(meta) else ""))
        print(f"rated {len(ranked)} of {len(paths)} images; best {ranked[0][1]:.3f} ({ranked[0][0]}), "
              f"worst {ranked[-1][1]:.3f} ({ranked[-1][0]}); wrote {out}.csv and {out}.png")
    if failed:
        sys.exit(1)
    return ranked


if __name__ == "__main__":
    main()
