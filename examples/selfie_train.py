"""Train a ConvNet to tell good selfies from bad ones, then rank them, map them and show the
rules it learned: a re-creation of "What a Deep Neural Network thinks about your #selfie".

    python examples/selfie_train.py                         # built-in synthetic selfies (~5 min, 2 cores)
    python examples/selfie_train.py --data DIR              # DIR/good/*.jpg and DIR/bad/*.jpg
    python examples/selfie_train.py --selfie-dataset DIR    # the public Selfie dataset layout
    python examples/selfie_train.py --posts posts.csv       # image,user,followers,likes,tags,age_days

With no data option it generates (once; reused later) synthetic selfies under data/selfies/,
labels them with the post's groups-of-100 rule, trains, and prints
``test accuracy: NN.N% (label ceiling: NN.N%)``. Everything it writes goes to one folder per data
source (--out overrides): runs/selfie/ for the synthetic data, runs/selfie-folders/,
runs/selfie-dataset/ or runs/selfie-posts/ for the others: model.npz, curves.png, continuum.png,
best.png, worst.png, tsne.png, filters.png, rules.png (where the data has attributes), and
run.json listing them; files an earlier run listed there and this one does not write are removed,
so no picture of another run is left looking like this one's. Then: selfie_rate.py,
selfie_crop.py, selfie_explain.py and selfie_web.py use model.npz.

With real data (--data, --selfie-dataset, --posts), images in which the face filter
(selfie_faces.py; trained first if runs/faces/model.npz is missing) finds no face are dropped
before labelling and counted in the summary; --no-face-filter keeps them.

Fine-tuning, the post's recipe: ``--pretrained runs/selfie-pretrain/model.npz --freeze 6`` starts
from a net selfie_pretrain.py trained on cleanly labelled attributes and trains only the layers
after the first six (two conv blocks); ``--n-labelled N`` keeps N labelled selfies for training.
selfie_finetune.py measures it against training from scratch.

Past one machine: ``mpiexec -n N python -m mpi4py examples/selfie_train.py`` trains data-parallel
over N MPI ranks (convlib.distributed; rank 0 prepares the data first, prints and writes), and
``--scheduler local:N`` or ``tcp://host:port`` decodes the images and runs the face filter on Dask
workers (lib/shards.py), with the same results as in one process.

Training writes OUT/checkpoint.npz after every epoch; Ctrl-C finishes the step in progress,
saves it and stops. The same command with --resume goes on from there and ends with the same
weights as an uninterrupted run (the checkpoint is removed when the run completes).
"""
import argparse
import os
import sys
import time

import numpy as np

import convlib as cl
from convlib.data import Compose, Cutout, RandomFlip, channel_stats, normalise
from convlib.distributed import world
from lib import selfie_data as sd
from lib import selfie_report as report
from lib import shards
from lib.selfie_model import build_net, p_good


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="folder with good/ and bad/ subfolders of images")
    src.add_argument("--selfie-dataset", help="folder with selfie_dataset.txt and images/")
    src.add_argument("--posts", help="CSV: image,user,followers,likes,tags,age_days")
    ap.add_argument("--synthetic-dir", default="data/selfies", help="where synthetic selfies are cached")
    ap.add_argument("--n-images", type=int, default=16000, help="synthetic selfies to generate")
    ap.add_argument("--out", default=None, help="output folder (default: runs/selfie, or "
                    "runs/selfie-folders, -dataset, -posts for the other data options)")
    ap.add_argument("--size", type=int, default=48, help="input size (multiple of 16)")
    ap.add_argument("--fit", choices=["crop", "squish"], default="crop", help="how images become square")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="target (1 - eps) onehot + eps / 2")
    ap.add_argument("--cutout", type=int, default=0, help="zero a random N x N square of each training image")
    ap.add_argument("--seed", type=int, default=0, help="the split, the initial weights and the batch order")
    ap.add_argument("--data-seed", type=int, default=0, help="which synthetic selfies are generated")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--min-age-days", type=float, default=30, help="posts labeller: minimum age")
    ap.add_argument("--min-followers", type=int, help="posts labeller: drop users below")
    ap.add_argument("--max-followers", type=int, help="posts labeller: drop users above")
    ap.add_argument("--max-tags", type=int, help="posts labeller: drop images with more tags")
    ap.add_argument("--pretrained", help="start from this model file's weights (e.g. from selfie_pretrain.py); "
                    "layers whose shapes differ, like a head for other classes, start fresh")
    ap.add_argument("--freeze", type=int, default=0, help="with --pretrained: keep the first N layers of the "
                    "net as they are (a block is 3 layers: Conv2d, ReLU, MaxPool2d)")
    ap.add_argument("--n-labelled", type=int, help="train on only this many labelled images, drawn at random "
                    "from the training split (and a quarter as many for validation); the test split stays the same")
    ap.add_argument("--no-pictures", action="store_true", help="write model.npz only (for experiments)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint.npz "
                    "(same options)")
    ap.add_argument("--no-face-filter", action="store_true", help="real data: keep images in which the "
                    "face filter finds no face (by default they are dropped before labelling)")
    ap.add_argument("--face-model", default="runs/faces/model.npz", help="the face filter (selfie_faces.py)")
    ap.add_argument("--scheduler", default="none", help="where images are decoded and searched for faces: "
                    "none (this process), local:N (a local Dask cluster) or tcp://host:port")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        shards.check_scheduler(args.scheduler)
    except ValueError as e:
        ap.error(str(e))
    for name in ("n_images", "size", "epochs", "batch_size", "n_labelled"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size % 16:
        ap.error(f"--size must be a multiple of 16, got {args.size}")
    if args.freeze < 0 or (args.freeze and not args.pretrained):
        ap.error("--freeze N needs --pretrained and N >= 0")
    if not args.lr > 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    if args.cutout < 0:
        ap.error(f"--cutout must be >= 0, got {args.cutout}")
    if not 0 <= args.label_smoothing < 1:
        ap.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    return args


def real_data_face_filter(args):
    """For real data: the face filter (selfie_faces.py's model; trained first if there is none)."""
    if not (args.data or args.selfie_dataset or args.posts):
        return None                                                 # the synthetic selfies all have one
    from lib import faces, faces_report
    if not os.path.isfile(args.face_model):
        print(f"no face model at {args.face_model}: training one first (as python examples/selfie_faces.py "
              f"--train does; skip the filter with --no-face-filter)")
        faces_report.train_filter(os.path.dirname(args.face_model) or ".", progress=not args.no_progress)
    faces.load_filter(args.face_model)                              # a bad model file ends here, not in a worker
    return lambda paths: shards.map_shards(shards.faces_found, paths, args.face_model, scheduler=args.scheduler,
                                           desc="looking for faces", progress=not args.no_progress)[1]


def load_source(args):
    """(paths, labels, info, source name) for the chosen data option."""
    labeller = dict(min_age_days=args.min_age_days, min_followers=args.min_followers,
                    max_followers=args.max_followers, max_tags=args.max_tags)
    keep = None if args.no_face_filter else real_data_face_filter(args)
    if args.data:
        return (*sd.from_class_folders(args.data, keep), "folders")
    if args.selfie_dataset:
        return (*sd.from_selfie_dataset(args.selfie_dataset, keep), "selfie-dataset")
    if args.posts:
        return (*sd.from_posts_csv(args.posts, keep, **labeller), "posts")
    return (*sd.synthetic(args.synthetic_dir, args.n_images, args.size, args.data_seed,
                          progress=not args.no_progress, **labeller), "synthetic")


# ---------------------------------------------------------------- main
def prepare_data(args):
    """Load and label the chosen source, split it, normalise: a dict of what training needs."""
    paths, labels, info, source = load_source(args)
    kept, x = shards.map_shards(shards.decode, paths, args.size, args.fit, scheduler=args.scheduler,
                                desc="loading images", progress=not args.no_progress)
    labels = labels[kept]
    if len(np.unique(labels)) < 2 or len(labels) < 20:
        raise SystemExit(f"error: need at least 20 decodable images of both classes, got {len(labels)} "
                         f"({int(labels.sum())} good)")
    tr, va, te = report.split(labels, args.seed)
    if args.n_labelled:                                             # few labels: a random subset, same test set
        rng = np.random.default_rng(args.seed)
        tr = np.sort(rng.choice(tr, min(args.n_labelled, len(tr)), replace=False))
        va = np.sort(rng.choice(va, min(max(1, args.n_labelled // 4), len(va)), replace=False))
    mean, std = channel_stats(x[tr])
    if args.pretrained:                                             # the features expect their own scaling
        mean, std = (pretrained_meta(args)[k] for k in ("mean", "std"))
    no_face = f", {info['no_face']} dropped: no face found" if info.get("no_face") else ""
    print(f"{source} data: {len(labels)} images ({int(labels.sum())} good{no_face}), "
          f"train {len(tr)} / val {len(va)} / test {len(te)}")
    return dict(x=x, xn=normalise(x, mean, std), labels=labels, kept=kept, info=info, source=source,
                split=(tr, va, te), mean=mean, std=std)


def train(args, d):
    """Build and fit the net; returns (net, history)."""
    tr, va, _ = d["split"]
    net = build_net(args.size)
    if args.pretrained:
        from_pretrained(net, args.pretrained, args.freeze)
    if args.device != "cpu":
        net.to(args.device)
    net.summary((3, args.size, args.size))
    opt = cl.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    hist = cl.fit(net, (d["xn"][tr], d["labels"][tr]), val=(d["xn"][va], d["labels"][va]), epochs=args.epochs,
                  batch_size=args.batch_size, optimizer=opt,
                  schedule=cl.optim.CosineLR(opt, total=args.epochs, warmup=1),
                  augment=Compose([RandomFlip()] + ([Cutout(args.cutout)] if args.cutout else [])), seed=args.seed,
                  loss_fn=cl.CrossEntropyLoss(label_smoothing=args.label_smoothing), progress=not args.no_progress,
                  checkpoint=os.path.join(args.out, "checkpoint.npz"), resume=args.resume,
                  on_epoch_end=lambda e, h: print(f"epoch {e}: loss {h['loss'][-1]:.4f} "
                                                  f"train acc {h['acc'][-1]:.3f} val acc {h['val_acc'][-1]:.3f}"))
    return net, hist


def pretrained_meta(args):
    """The metadata of --pretrained; exits with a message if it does not fit this run."""
    if not os.path.isfile(args.pretrained):
        raise SystemExit(f"error: --pretrained {args.pretrained}: no such file (selfie_pretrain.py writes one)")
    meta = cl.load(args.pretrained, with_metadata=True)[1]
    if meta.get("size") != args.size or not {"mean", "std"} <= set(meta):
        raise SystemExit(f"error: --pretrained {args.pretrained} was trained at size {meta.get('size')}, "
                         f"this run uses --size {args.size}")
    return meta


def from_pretrained(net, path, freeze):
    """Copy into ``net`` every array of the model at ``path`` that has the same name and shape,
    start the rest fresh (e.g. a head for other classes), freeze the first ``freeze`` layers."""
    own = net.state_dict()
    state = {k: v for k, v in cl.load(path).state_dict().items() if k in own and v.shape == own[k].shape}
    keys = net.load_state_dict(state, strict=False)
    if freeze > len(net):
        raise SystemExit(f"error: --freeze {freeze}: the net has only {len(net)} layers")
    net[:freeze].requires_grad_(False)
    print(f"pretrained: {len(state)} arrays from {path}; starting fresh: {', '.join(keys.missing_keys) or 'none'}; "
          f"frozen: {freeze} layers ({', '.join(type(layer).__name__ for layer in net[:freeze]) or 'none'})")


def rules_of(d):
    """The attribute rules of the held-out images, where the source has attributes, else None."""
    te, kept, info = d["split"][2], d["kept"], d["info"]
    if d["source"] == "synthetic":
        return report.synthetic_rules([info["attrs"][i] for i in kept[te]])
    if d["source"] == "selfie-dataset":
        return report.selfie_dataset_rules({k: v[kept][te] for k, v in info["codes"].items()})
    return None


def default_out(args):
    """One output folder per data source, so a run on other data never replaces the synthetic model."""
    if args.data:
        return "runs/selfie-folders"
    if args.selfie_dataset:
        return "runs/selfie-dataset"
    return "runs/selfie-posts" if args.posts else "runs/selfie"


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    args.out = args.out or default_out(args)
    comm = world()                                                  # MPI ranks under mpiexec, else one process
    if comm.rank:                                                   # rank 0 prints, writes and prepares first
        sys.stdout, args.no_progress = open(os.devnull, "w"), True
        comm.barrier()                                              # ... then the others read its cache
    os.makedirs(args.out, exist_ok=True)
    if args.pretrained:
        pretrained_meta(args)                                       # a mismatch ends here, before any data work
    cl.manual_seed(args.seed)
    d = prepare_data(args)
    if not comm.rank:
        comm.barrier()
    try:
        net, hist = train(args, d)
    except KeyboardInterrupt as e:
        raise SystemExit(f"\ninterrupted ({e}).\nTo go on, run the same command with --resume.") from None
    if comm.rank:
        return None                                                 # the same net as rank 0's, which writes it
    os.remove(os.path.join(args.out, "checkpoint.npz"))             # the run is complete: model.npz holds it
    te = d["split"][2]
    p_test = p_good(net, d["xn"][te])                                # (T,) P(good) of the held-out selfies
    test_acc = float(np.mean((p_test >= 0.5) == d["labels"][te]))
    ceiling = None
    if "quality" in d["info"]:                                       # the ideal judge, on the same test images
        ideal = sd.ideal_labels(d["info"]["quality"], d["info"]["groups"])[d["kept"]][te]
        ceiling = float(np.mean(ideal == d["labels"][te]))
    held_out = np.sort(p_test)                                      # for percentiles (selfie_web.py)
    meta = dict(classes=["bad", "good"], size=args.size, fit=args.fit, mean=d["mean"], std=d["std"],
                source=d["source"], test_accuracy=test_acc, label_ceiling=ceiling, epochs=args.epochs,
                held_out_p_good=[round(float(v), 5) for v in held_out], pretrained=args.pretrained,
                frozen_layers=args.freeze, n_train=len(d["split"][0]))
    cl.save(net, os.path.join(args.out, "model.npz"), metadata=meta)
    wrote = ["model.npz"]
    if not args.no_pictures:
        net.to("cpu")                                                # the pictures run on the host
        report.write_pictures(net, hist, d["xn"][te], d["x"][te], d["labels"][te], p_test, args.out, args.seed,
                              args.cutout)
        wrote += ["curves.png", "continuum.png", "best.png", "worst.png", "tsne.png", "filters.png"]
        wrote += ["rules.png"] if report.write_rules(rules_of(d), p_test, args.out) else []
    report.record_run(args.out, wrote, source=d["source"])
    minutes = (time.perf_counter() - t_start) / 60
    print(f"\nwrote {args.out}/: {' '.join(wrote)}  ({minutes:.1f} min)")
    ceiling_text = f"{100 * ceiling:.1f}%" if ceiling is not None else "n/a"
    print(f"test accuracy: {100 * test_acc:.1f}% (label ceiling: {ceiling_text})")
    return dict(test_accuracy=test_acc, ceiling=ceiling, history=hist, minutes=minutes)


if __name__ == "__main__":
    main()
