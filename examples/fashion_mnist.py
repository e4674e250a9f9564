"""Fashion-MNIST with a small ConvNet, batch norm and augmentation: convlib on a public benchmark.

    apt-get install dataset-fashion-mnist          # IDX files in /usr/share/datasets/fashion-mnist/
    python examples/fashion_mnist.py [--seed 0] [--epochs 24] [--out runs/fashion]

The recipe (the defaults): Conv(1,24,3)-BN-ReLU-MaxPool, Conv(24,48,3)-BN-ReLU-MaxPool,
Conv(48,96,3)-BN-ReLU (no third pool: the classifier sees the 7x7 map), Linear(4704,128)-BN-ReLU-
Dropout(0.1)-Linear(128,10); SGD, Nesterov momentum 0.9, lr 0.1 with one warm-up epoch then
cosine decay over 24 epochs, weight decay 5e-4, batch 128, label smoothing 0.1, horizontal flips
and an 8x8 cutout (a random square zeroed) in training, and flip averaging at test time (the mean
of the probabilities of each image and its mirror image); all 60,000 training images, the last
epoch's weights kept (--val N holds N out for per-epoch validation and keeps the best epoch).

It shows a progress bar per epoch, writes curves.png (loss and accuracy per epoch) and
confusion.png (the test set's confusion matrix) to --out, and ends with the test accuracy
without and with flip averaging (``test accuracy: NN.NN% (24 epochs, M.M min)``). Results and
the recipes tried: docs/fashion.md.
"""
import argparse
import os
import sys
import time

import numpy as np

import convlib as cl
from convlib.data import Compose, Cutout, RandomCrop, RandomFlip, read_idx
from lib import plots

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def load(folder, split):
    """(x float32 (N, 1, 28, 28) in [0, 1], y int64 (N,)) for split 'train' or 't10k'."""
    def find(name):
        for suffix in (".gz", ""):
            if os.path.exists(os.path.join(folder, name + suffix)):
                return os.path.join(folder, name + suffix)
        return os.path.join(folder, name + ".gz")                    # read_idx names it in its error
    x = read_idx(find(f"{split}-images-idx3-ubyte"))
    y = read_idx(find(f"{split}-labels-idx1-ubyte"))
    if x.ndim != 3 or y.shape != (len(x),):
        raise ValueError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
    return x[:, None].astype(np.float32) / 255, y.astype(np.int64)


def build_net(width=(24, 48, 96), dropout=0.1):
    """Three 3x3 conv blocks (``width`` filters, batch norm, ReLU), pooling after the first two
    only, so the classifier sees the 7x7 map, then Linear-BN-ReLU-Dropout(``dropout``)-Linear:
    (N, 1, 28, 28) -> logits (N, 10)."""
    layers, c = [], 1
    for f, pool in zip(width, (True, True, False)):
        layers += [cl.Conv2d(c, f, 3, padding=1), cl.BatchNorm2d(f), cl.ReLU()] + ([cl.MaxPool2d(2)] if pool else [])
        c = f
    return cl.Sequential(*layers, cl.Flatten(), cl.Linear(c * 7 * 7, 128), cl.BatchNorm1d(128), cl.ReLU(),
                         cl.Dropout(dropout), cl.Linear(128, 10))


def _width(text):
    """--width: three positive integers separated by commas."""
    try:
        width = tuple(int(v) for v in text.split(","))
    except ValueError:
        width = ()
    if len(width) != 3 or min(width) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 16,32,64, got {text!r}")
    return width


def _probability(text):
    """--dropout: a number in [0, 1)."""
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0 <= p < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="runs/fashion")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--val", type=int, default=0,
                    help="training images held out for validation, the best epoch kept (0: none, the last kept)")
    ap.add_argument("--limit", type=int, default=0, help="use only this many training images (quick runs)")
    ap.add_argument("--crop", type=int, default=0, help="random-crop padding (0: no crop augmentation)")
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--cutout", type=int, default=8, help="zero a random square of this side (0: no cutout)")
    ap.add_argument("--label-smoothing", type=float, default=0.1, help="target (1 - eps) onehot + eps / 10")
    ap.add_argument("--width", type=_width, default=(24, 48, 96), help="the three conv blocks' filters, e.g. 16,32,64")
    ap.add_argument("--dropout", type=_probability, default=0.1, help="dropout before the last Linear, in [0, 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0 or not 0 <= args.label_smoothing < 1:
        ap.error("--epochs and --batch-size must be >= 1, --lr > 0 and --label-smoothing in [0, 1)")
    t0 = time.perf_counter()
    try:
        xtr, ytr = load(args.data_dir, "train")
        xte, yte = load(args.data_dir, "t10k")
    except ValueError as e:
        sys.exit(f"error: {e}\nFashion-MNIST comes with: apt-get install dataset-fashion-mnist "
                 f"(or pass --data-dir with its four IDX files)")
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    mean, std = float(xtr.mean()), float(xtr.std())
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(xtr))
    nval = min(args.val, len(xtr) // 5)
    va, tr = order[:nval], order[nval:]
    val = (xtr[va], ytr[va]) if nval else None                      # --val 0: train on all, keep the last epoch
    print(f"Fashion-MNIST: train {len(tr)}, validation {len(va)}, test {len(xte)}")
    cl.manual_seed(args.seed)
    net = build_net(args.width, args.dropout).to(args.device)
    net.summary((1, 28, 28))
    opt = cl.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = cl.optim.CosineLR(opt, total=args.epochs, warmup=1)
    augment = Compose(([RandomCrop(args.crop)] if args.crop else []) + ([] if args.no_flip else [RandomFlip()])
                      + ([Cutout(args.cutout)] if args.cutout else []))
    loss_fn = cl.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    hist = cl.fit(net, (xtr[tr], ytr[tr]), val=val, epochs=args.epochs, batch_size=args.batch_size, loss_fn=loss_fn,
                  optimizer=opt, schedule=sched, augment=augment, seed=args.seed, progress=not args.no_progress,
                  on_epoch_end=lambda e, h: print(f"epoch {e}: loss {h['loss'][-1]:.4f} train acc "
                                                  f"{h['acc'][-1]:.4f}"
                                                  + (f" val acc {h['val_acc'][-1]:.4f}" if val else "")
                                                  + f" ({h['seconds'][-1]:.0f} s)"))
    plain = float((cl.predict_proba(net, xte, 500).argmax(1) == yte).mean())
    pred = cl.predict_proba(net, xte, 500, flip=not args.no_flip).argmax(1)     # mean over each image and its mirror
    acc = float((pred == yte).mean())
    print(f"test accuracy without flip averaging: {100 * plain:.2f}%")
    os.makedirs(args.out, exist_ok=True)
    aug = [name for name, on in (("random crops", args.crop), ("flips", not args.no_flip), ("cutout", args.cutout))
           if on]
    about = f"train: {len(tr):,} images" + (f" with {', '.join(aug)}" if aug else "") + \
        (f"; val: {nval:,} held out, the best epoch's weights kept" if val else
         "; no validation split: the last epoch kept")
    plots.save_png(plots.curves(hist, [f"Fashion-MNIST training, seed {args.seed}: loss and accuracy per epoch", about,
                                       f"loss with label smoothing {args.label_smoothing}; test accuracy "
                                       f"{100 * acc:.2f}% (confusion.png)"]),
                   os.path.join(args.out, "curves.png"))
    cm = np.zeros((10, 10), dtype=np.int64)
    np.add.at(cm, (yte, pred), 1)
    title = f"Fashion-MNIST, {len(yte):,} test images: {100 * acc:.2f}% correct"
    plots.save_png(plots.confusion_image(cm, CLASSES, title), os.path.join(args.out, "confusion.png"))
    cl.save(net, os.path.join(args.out, "model.npz"), metadata=dict(classes=CLASSES, mean=mean, std=std))
    minutes = (time.perf_counter() - t0) / 60
    kept = f"best epoch {hist.best_epoch} (val acc {hist.best_val_acc:.4f})" if val else "last epoch kept"
    print(f"{kept}; wrote {args.out}/curves.png, "
          f"confusion.png, model.npz")
    print(f"test accuracy: {100 * acc:.2f}% ({args.epochs} epochs, {minutes:.1f} min)")
    return acc, hist


if __name__ == "__main__":
    main()
