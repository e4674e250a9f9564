"""Pretrain the selfie ConvNet on a task the generator labels cleanly and in bulk: which of six
yes/no attributes a generated selfie has (filtered, white border, low light, group shot, long
hair, eyewear), one class per combination (64 classes). The post fine-tuned a net pretrained on
ImageNet; this is that first stage at small scale. The labels are exact, not like-count noise,
and the images are generated with another seed than selfie_train.py's, so no test selfie is
seen here.

    python examples/selfie_pretrain.py          # ~3 min on 2 cores: runs/selfie-pretrain/model.npz
    python examples/selfie_train.py --pretrained runs/selfie-pretrain/model.npz --freeze 6 --n-labelled 1000

Four of the six attributes are among those the generator's hidden quality rules use (filter,
border, light, group), two are not (hair length counts, eyewear does not); face size and
position, the rules that weigh most, are left for fine-tuning to learn.
"""
import argparse
import os
import time

import numpy as np

import convlib as cl
from convlib.data import RandomFlip, channel_stats, load_images, normalise
from lib import selfie_data as sd
from lib.selfie_model import build_net

ATTRIBUTES = [("filtered", lambda a: a["filter"] != "none"), ("border", lambda a: a["border"] == "True"),
              ("low light", lambda a: float(a["brightness"]) < 0.5), ("group", lambda a: int(a["n_faces"]) > 1),
              ("long hair", lambda a: a["long_hair"] == "True"), ("eyewear", lambda a: a["eyewear"] != "none")]


def attribute_class(row):
    """The class of one attributes.csv row: bit k set when attribute k holds -> int in [0, 64)."""
    return sum(int(bool(test(row))) << k for k, (_, test) in enumerate(ATTRIBUTES))


def class_names():
    return ["+".join(n for k, (n, _) in enumerate(ATTRIBUTES) if c >> k & 1) or "none"
            for c in range(2 ** len(ATTRIBUTES))]


def attribute_accuracy(pred, y):
    """{attribute: share of images whose predicted class gets that attribute right}."""
    return {n: float(np.mean((pred >> k & 1) == (y >> k & 1))) for k, (n, _) in enumerate(ATTRIBUTES)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=16000)
    ap.add_argument("--size", type=int, default=48, help="input size; selfie_train.py must use the same")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1000, help="generator seed (not selfie_train.py's 0)")
    ap.add_argument("--synthetic-dir", default="data/selfies-pretrain")
    ap.add_argument("--out", default="runs/selfie-pretrain")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.n_images < 100 or args.epochs < 1 or args.size % 16:
        ap.error("need --n-images >= 100, --epochs >= 1 and --size a multiple of 16")
    t0 = time.perf_counter()
    cl.manual_seed(args.seed)
    folder = sd.generate(args.synthetic_dir, n=args.n_images, size=args.size, seed=args.seed,
                         progress=not args.no_progress)
    rows = sd.read_csv(os.path.join(folder, "attributes.csv"), sd.ATTRIBUTE_FIELDS)
    x, kept = load_images([os.path.join(folder, r["image"]) for r in rows], args.size, progress=not args.no_progress)
    y = np.array([attribute_class(rows[i]) for i in kept], dtype=np.int64)          # (N,) in [0, 64)
    n_val = len(y) // 10
    mean, std = channel_stats(x[n_val:])
    xn = normalise(x, mean, std)                                    # (N, 3, S, S)
    net = build_net(args.size)
    net[-1] = cl.Linear(net[-1].in_features, 2 ** len(ATTRIBUTES))  # 64 classes, not good/bad
    opt = cl.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    cl.fit(net, (xn[n_val:], y[n_val:]), val=(xn[:n_val], y[:n_val]), epochs=args.epochs, batch_size=32,
           optimizer=opt, schedule=cl.optim.CosineLR(opt, total=args.epochs, warmup=1), augment=RandomFlip(),
           seed=args.seed, progress=not args.no_progress,
           on_epoch_end=lambda e, h: print(f"epoch {e}: loss {h['loss'][-1]:.4f} val acc {h['val_acc'][-1]:.3f}"))
    pred = cl.predict_proba(net, xn[:n_val]).argmax(1)
    per_attr = attribute_accuracy(pred, y[:n_val])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.npz")
    cl.save(net, path, metadata=dict(classes=class_names(), size=args.size, fit="crop", mean=mean, std=std,
                                     source="synthetic-attributes", attribute_accuracy=per_attr))
    print("held-out accuracy per attribute: " + ", ".join(f"{n} {100 * a:.1f}%" for n, a in per_attr.items()))
    print(f"all six right: {100 * np.mean(pred == y[:n_val]):.1f}% of {n_val} held-out images")
    print(f"wrote {path} ({(time.perf_counter() - t0) / 60:.1f} min); fine-tune it with:\n"
          f"  python examples/selfie_train.py --pretrained {path} --freeze 6 --n-labelled 1000")
    return dict(path=path, attribute_accuracy=per_attr)


if __name__ == "__main__":
    main()
