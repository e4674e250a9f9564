"""Train a ConvNet to tell good selfies from bad ones, then rank them, map them and show the
rules it learned: a re-creation of "What a Deep Neural Network thinks about your #selfie".

    python examples/selfie_train.py                         # built-in synthetic selfies (~5 min, 2 cores)
    python examples/selfie_train.py --data DIR              # DIR/good/*.jpg and DIR/bad/*.jpg
    python examples/selfie_train.py --selfie-dataset DIR    # the public Selfie dataset layout
    python examples/selfie_train.py --posts posts.csv       # image,user,followers,likes,tags,age_days

With no data option it generates (once; reused later) synthetic selfies under data/selfies/,
labels them with the post's groups-of-100 rule, trains, and prints
``test accuracy: NN.N% (label ceiling: NN.N%)``. Everything it writes goes to runs/selfie/
(--out): model.npz, curves.png, continuum.png, best.png, worst.png, tsne.png, filters.png,
rules.png. Then: selfie_rate.py, selfie_crop.py and selfie_explain.py use model.npz.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convlib as cl                                                 # noqa: E402
import selfie_data as sd                                             # noqa: E402
import plots                                         # noqa: E402
from convlib.data import RandomFlip, channel_stats, load_images, normalise  # noqa: E402
from selfie_model import build_net, p_good                           # noqa: E402
from tsne import tsne                                                # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="folder with good/ and bad/ subfolders of images")
    src.add_argument("--selfie-dataset", help="folder with selfie_dataset.txt and images/")
    src.add_argument("--posts", help="CSV: image,user,followers,likes,tags,age_days")
    ap.add_argument("--synthetic-dir", default="data/selfies", help="where synthetic selfies are cached")
    ap.add_argument("--n-images", type=int, default=16000, help="synthetic selfies to generate")
    ap.add_argument("--out", default="runs/selfie", help="output folder")
    ap.add_argument("--size", type=int, default=48, help="input size (multiple of 16)")
    ap.add_argument("--fit", choices=["crop", "squish"], default="crop", help="how images become square")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--min-age-days", type=float, default=30, help="posts labeller: minimum age")
    ap.add_argument("--min-followers", type=int, help="posts labeller: drop users below")
    ap.add_argument("--max-followers", type=int, help="posts labeller: drop users above")
    ap.add_argument("--max-tags", type=int, help="posts labeller: drop images with more tags")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for name in ("n_images", "size", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size % 16:
        ap.error(f"--size must be a multiple of 16, got {args.size}")
    if not args.lr > 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    return args


def load_source(args):
    """(paths, labels, info, source name) for the chosen data option."""
    labeller = dict(min_age_days=args.min_age_days, min_followers=args.min_followers,
                    max_followers=args.max_followers, max_tags=args.max_tags)
    if args.data:
        return (*sd.from_class_folders(args.data), "folders")
    if args.selfie_dataset:
        return (*sd.from_selfie_dataset(args.selfie_dataset), "selfie-dataset")
    if args.posts:
        return (*sd.from_posts_csv(args.posts, **labeller), "posts")
    return (*sd.synthetic(args.synthetic_dir, args.n_images, args.size, args.seed,
                          progress=not args.no_progress, **labeller), "synthetic")


def split(labels, seed, fractions=(0.7, 0.15)):
    """Stratified train/val/test index arrays: each split keeps the class balance."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = int(round(fractions[0] * len(idx)))
        b = a + int(round(fractions[1] * len(idx)))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


# ---------------------------------------------------------------- the rules table
def synthetic_rules(attrs):
    """[(name, mask with, mask without, the post's verdict)] over synthetic attribute rows."""
    f = lambda k: np.array([float(a[k]) for a in attrs])
    b = lambda k: np.array([a[k] == "True" for a in attrs])
    face, cx, cy = f("face_frac"), f("cx"), f("cy")
    single = f("n_faces") == 1
    filt = np.array([a["filter"] != "none" for a in attrs])
    wear = np.array([a["eyewear"] for a in attrs])
    return [
        ("white border", b("border"), ~b("border"), "do"),
        ("b&w or faded filter", filt, ~filt, "do"),
        ("face ~1/3 of frame (0.25-0.45)", single & (face >= 0.25) & (face < 0.45),
         single & ((face < 0.25) | (face >= 0.45)), "do"),
        ("head too large (> 0.6)", single & (face > 0.6), single & (face <= 0.6), "don't"),
        ("forehead cut off", b("forehead_cut"), ~b("forehead_cut"), "do"),
        ("long hair", b("long_hair"), ~b("long_hair"), "do"),
        ("oversaturated", f("saturation") > 1.4, f("saturation") <= 1.4, "do"),
        ("centred (|x-0.5| < 0.1)", np.abs(cx - 0.5) < 0.1, np.abs(cx - 0.5) >= 0.1, "do"),
        ("face near the top (y < 0.4)", cy < 0.4, cy >= 0.4, "do"),
        ("low light", f("brightness") < 0.5, f("brightness") >= 0.5, "don't"),
        ("group shot", ~single, single, "don't"),
        ("sunglasses", wear == "sunglasses", wear == "none", ""),
        ("glasses", wear == "glasses", wear == "none", ""),
    ]


def selfie_dataset_rules(codes):
    verdicts = {"dim_lighting": "don't", "harsh_lighting": "don't", "is_female": "do"}
    return [(name, c == 1, c == -1, verdicts.get(name, "")) for name, c in codes.items()]


def rules_table(rules, p):
    """Rows (name, n with, P(good) with, P(good) without, post, agrees) and the text table."""
    rows = []
    for name, yes, no, post in rules:
        if yes.sum() < 5 or no.sum() < 5:
            continue
        pw, pn = float(p[yes].mean()), float(p[no].mean())
        agrees = "" if not post else ("yes" if (pw > pn) == (post == "do") else "NO")
        rows.append((name, int(yes.sum()), pw, pn, post, agrees))
    head = f"{'attribute':32s} {'n':>5s} {'P(good) with':>13s} {'without':>8s}  {'post says':9s} net agrees"
    lines = [head, "-" * len(head)] + [f"{r[0]:32s} {r[1]:5d} {r[2]:13.3f} {r[3]:8.3f}  {r[4]:9s} {r[5]}"
                                       for r in rows]
    return rows, "\n".join(lines)


# ---------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cl.manual_seed(args.seed)
    paths, labels, info, source = load_source(args)
    x, kept = load_images(paths, args.size, args.fit, progress=not args.no_progress)
    labels = labels[kept]
    if len(np.unique(labels)) < 2 or len(labels) < 20:
        raise SystemExit(f"error: need at least 20 decodable images of both classes, got {len(labels)} "
                         f"({int(labels.sum())} good)")
    tr, va, te = split(labels, args.seed)
    mean, std = channel_stats(x[tr])
    xn = normalise(x, mean, std)                                     # (N, 3, S, S)
    print(f"{source} data: {len(labels)} images ({int(labels.sum())} good), "
          f"train {len(tr)} / val {len(va)} / test {len(te)}")

    net = build_net(args.size)
    if args.device != "cpu":
        net.to(args.device)
    net.summary((3, args.size, args.size))
    opt = cl.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = cl.optim.CosineLR(opt, total=args.epochs, warmup=1)
    hist = cl.fit(net, (xn[tr], labels[tr]), val=(xn[va], labels[va]), epochs=args.epochs,
                  batch_size=args.batch_size, optimizer=opt, schedule=sched, augment=RandomFlip(),
                  seed=args.seed, progress=not args.no_progress,
                  on_epoch_end=lambda e, h: print(f"epoch {e}: loss {h['loss'][-1]:.4f} "
                                                  f"train acc {h['acc'][-1]:.3f} val acc {h['val_acc'][-1]:.3f}"))
    _, test_acc = cl.evaluate(net, xn[te], labels[te])
    ceiling = None
    if "quality" in info:                                            # the ideal judge, on the same test images
        ceiling = float(np.mean(sd.ideal_labels(info["quality"], info["groups"])[kept][te] == labels[te]))
    meta = dict(classes=["bad", "good"], size=args.size, fit=args.fit, mean=mean, std=std,
                source=source, test_accuracy=test_acc, label_ceiling=ceiling, epochs=args.epochs)
    cl.save(net, os.path.join(args.out, "model.npz"), metadata=meta)
    net.to("cpu")                                                    # the pictures below run on the host

    # ---- pictures
    p = p_good(net, xn[te])                                          # (T,) P(good) on held-out selfies
    order = np.argsort(-p)
    imgs = x[te]
    curves = plots.side_by_side([
        plots.line_chart({"train loss": hist["loss"], "val loss": hist["val_loss"]}, "loss", "epoch"),
        plots.line_chart({"train acc": hist["acc"], "val acc": hist["val_acc"]}, "accuracy", "epoch")])
    plots.save_png(curves, os.path.join(args.out, "curves.png"))
    rows, cols = 6, 12
    picks = order[np.linspace(0, len(order) - 1, min(len(order), rows * cols)).astype(int)]
    plots.save_png(plots.grid(imgs[picks], cols, [f"{v:.2f}" for v in p[picks]], cell=64,
                              title="held-out selfies from best (top left) to worst (bottom right), P(good)"),
                   os.path.join(args.out, "continuum.png"))
    k = min(48, len(order))
    plots.save_png(plots.grid(imgs[order[:k]], 8, [f"{v:.2f}" for v in p[order[:k]]], cell=80,
                              title=f"best {k} held-out selfies"), os.path.join(args.out, "best.png"))
    plots.save_png(plots.grid(imgs[order[::-1][:k]], 8, [f"{v:.2f}" for v in p[order[::-1][:k]]], cell=80,
                              title=f"worst {k} held-out selfies"), os.path.join(args.out, "worst.png"))
    feats = net[:-1](xn[te][:1500])                                  # (T, hidden) last hidden layer
    xy = tsne(feats, seed=args.seed)
    plots.save_png(plots.mosaic(imgs[:1500], xy, cells=min(30, max(4, int(np.sqrt(len(xy)) * 1.2)))),
                   os.path.join(args.out, "tsne.png"))
    plots.save_png(plots.filters_image(net[0].weight.data), os.path.join(args.out, "filters.png"))

    # ---- the rules the net learned
    rules = None
    if source == "synthetic":
        rules = synthetic_rules([info["attrs"][i] for i in kept[te]])
    elif source == "selfie-dataset":
        rules = selfie_dataset_rules({k: v[kept][te] for k, v in info["codes"].items()})
    if rules is not None:
        table_rows, table = rules_table(rules, p)
        print("\nmean P(good) on held-out selfies, by attribute (the rules the net learned):\n" + table)
        plots.save_png(plots.bar_chart([(r[0], r[2], f"vs {r[3]:.2f} {('post: ' + r[4]) if r[4] else ''}")
                                        for r in table_rows], "mean P(good) with each attribute"),
                       os.path.join(args.out, "rules.png"))
    else:
        print("\n(no attributes in this data source: rules table skipped)")
    minutes = (time.perf_counter() - t_start) / 60
    print(f"\nwrote {args.out}/: model.npz curves.png continuum.png best.png worst.png tsne.png filters.png"
          + (" rules.png" if rules is not None else "") + f"  ({minutes:.1f} min)")
    ceiling_text = f"{100 * ceiling:.1f}%" if ceiling is not None else "n/a"
    print(f"test accuracy: {100 * test_acc:.1f}% (label ceiling: {ceiling_text})")
    return dict(test_accuracy=test_acc, ceiling=ceiling, history=hist, minutes=minutes)


if __name__ == "__main__":
    main()
