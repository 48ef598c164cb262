"""Active-learning benchmark on NASA Super (Ni-superalloy SEM, three classes; tertiary gamma-prime
is rare, ~2% of the pixels, and small): the oracle experiment, acquisitions against random.
By default Super1 (domain A) and Super2 (domain B: other alloys and settings) are pooled, so the
pool spans more than round 0 has seen: Super1's 4 test images and every other Super2 image by
name are the fixed held-out set, the tiles of the other images are the pool with masks hidden.
Acquisition is class-balanced (al.class_balanced): uncertainty about a phase that is rare among
the labels so far counts more. Tiles at half scale (64 px centres), one model per round trained
from fresh weights, on CPU. Last line:

    al_nasa aulc_best=<strategy>:<x> aulc_random=<y> aulc_gap_ci90=<lo>,<hi>
        frac_tiles_to_95pct=<strategy>:<f> random:<f> minutes=<m>          (all on one line)

AULC: area under held-out mIoU against the labelled fraction of the pool, divided by the
fraction's range, averaged over seeds; aulc_gap_ci90: paired bootstrap 90% interval of the
best acquisition's lead over random (seeds resampled, each with its own pair).
frac_tiles_to_95pct: the pool fraction at which the mean curve over seeds first reaches 95% of
the whole-pool mIoU (nan: not within the rounds). The simulated expert seconds of every round
are in curve.csv and curve_seconds.png.

Usage: python benchmarks/al_nasa.py [--seeds 3] [--rounds 3] [--initial 8] [--batch 16]
       [--strategies entropy] [--random-until N] [--members 1] [--folds K] [--epochs 30]
       [--domains A B] [--initial-domains A] [--no-class-balanced] [--out bench-out/al_nasa]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import fresh, parser, project, require_data


def main() -> int:
    args_parser = parser(__doc__, "al_nasa", dataset="nasa-super")
    args_parser.add_argument("--seeds", type=int, default=3)
    args_parser.add_argument("--rounds", type=int, default=3)
    args_parser.add_argument("--initial", type=int, default=8)
    args_parser.add_argument("--batch", type=int, default=16)
    args_parser.add_argument("--strategies", nargs="+", default=["entropy"])
    args_parser.add_argument(
        "--class-balanced",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="al.class_balanced: uncertainty about a phase rare among the labels so far counts more",
    )
    args_parser.add_argument(
        "--random-until", type=int, help="al.random_until: random batches while fewer tiles are labelled"
    )
    args_parser.add_argument("--members", type=int, default=1, help="ensemble members (k-fold)")
    args_parser.add_argument(
        "--folds", type=int, help="k of the members' k-fold (default: one per member; 1: every member sees all labels)"
    )
    args_parser.add_argument("--epochs", type=int, default=30, help="epochs per round")
    args_parser.add_argument("--resume", action="store_true", help="keep --out and go on with the experiment there")
    args_parser.add_argument(
        "--domains",
        nargs="+",
        default=["A", "B"],
        help="imaging domains to pool (B: Super2, other alloys and settings; a domain without test "
        "images gives every other image, by name, to the held-out set)",
    )
    args_parser.add_argument(
        "--initial-domains",
        nargs="+",
        default=[],
        help="draw round 0's tiles from these domains only (e.g. A: the lab has labelled Super1 and "
        "now pools Super2's micrographs, unlabelled); default: the whole pool",
    )
    args = args_parser.parse_args()
    data = require_data(args.data)

    import pandas as pd

    from microal.active.simulate import Simulation, simulate
    from microal.inference.evaluate import format_table

    started = time.time()
    out = Path(args.out).resolve() if args.resume else fresh(args.out)
    manifest = pd.read_csv(data / "manifest.csv")
    manifest = manifest[manifest.domain.isin(args.domains)].copy()
    for domain, images in manifest.groupby("domain"):
        if not images.split.eq("test").any():
            ordered = images.sort_values("image").index
            manifest.loc[ordered, "split"] = ["train" if i % 2 == 0 else "test" for i in range(len(ordered))]
    for column in ("image", "mask"):
        manifest[column] = manifest[column].map(lambda p: str(data / p))
    manifest.to_csv(out / "manifest.csv", index=False)
    config, _ = project(
        "nasa-super.yaml",
        {
            "tiling.scale": 0.5,
            "tiling.tile_size": 64,
            "tiling.margin": 16,
            "split.method": "column",
            "split.train_values": ["train", "val"],
            "split.val_values": [],
            "split.test_values": ["test"],
            "model.options": {"decoder_channels": [128, 64, 32, 16, 8]},
            "training.epochs": args.epochs,
            "training.samples_per_epoch": 64,
            "training.batch_size": 8,
            "training.augmentation": "basic",
            "training.lr": 0.003,
            "al.members": args.members,
            "al.folds": args.folds,
            "al.class_balanced": args.class_balanced,
            "al.random_until": args.random_until,
            "al.reduction": "mean",
            "al.diversity": "kcenter",
            "al.per_image_cap": 4,
            "al.score_batch_size": 128,
        },
        out / "manifest.csv",
        out,
    )
    sim = Simulation(
        args.initial,
        args.batch,
        args.rounds,
        tuple(args.strategies),
        args.seeds,
        initial_domains=tuple(args.initial_domains),
    )
    curve, summary, full = simulate(config, out / "tiles", out / "sim", sim)
    print(format_table(summary))
    print(f"curves: {out / 'sim' / 'curve.png'}, {out / 'sim' / 'curve_seconds.png'}")

    acquisitions = summary[summary.strategy != "random"]
    best = acquisitions.iloc[0]
    random = summary.set_index("strategy").loc["random"]
    minutes = (time.time() - started) / 60
    print(f"whole pool labelled: mIoU {full:.4f}")
    print(
        f"al_nasa aulc_best={best.strategy}:{best.aulc:.4f} aulc_random={random.aulc:.4f} "
        f"aulc_gap_ci90={best.aulc_gap_ci90_low:.4f},{best.aulc_gap_ci90_high:.4f} "
        f"frac_tiles_to_95pct={best.strategy}:{best.frac_tiles_to_95pct:.3f} random:{random.frac_tiles_to_95pct:.3f} "
        f"minutes={minutes:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
