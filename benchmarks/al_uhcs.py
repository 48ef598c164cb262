"""Active-learning benchmark on UHCS: the oracle experiment, acquisitions against random.

UHCS at 0.5x scale (64 px tile centres), the four test4A images as the fixed held-out set (their
samples out of the pool), the other 16 micrographs' tiles as the pool with masks hidden; a
model (or an ensemble of k-fold members) trained per round, on CPU. Last line:

    al_uhcs aulc_best=<strategy>:<value> aulc_random=<value> full_pool_miou=<value>
        frac_tiles_to_95pct=<strategy>:<f> random:<f> aulc_gap_ci90=<lo>,<hi> minutes=<m>   (all on one line)

AULC: area under held-out mIoU against labelled fraction of the pool, divided by the fraction's
range (a mean mIoU over the curve), averaged over seeds; aulc_gap_ci90: paired bootstrap 90%
interval over seeds of the best acquisition's lead over random. frac_tiles_to_95pct: the pool fraction at
which mIoU first reaches 95% of the mIoU with the whole pool labelled (nan: not within the rounds).

One acquisition (uncertainty: entropy of the mean prediction) against random by default, 3 seeds,
2 rounds of 48 tiles from 16 (the last at 29% of the pool). Every round trains from fresh
weights for 40 epochs of 64 windows (one cosine schedule); the whole-pool reference uses the same
recipe, once per seed. A round takes about 2 minutes on 2 cores.

Why one model per round (--members, default 1) and fresh weights rather than --warm-start: k-fold
members on 2 cores split the labels and the threads, and short warm-started rounds plateau; the
probes behind that, and the measured figures, are in benchmarks/RESULTS.md.

Usage: python benchmarks/al_uhcs.py [--seeds 3] [--rounds 2] [--batch 48] [--strategies entropy]
       [--members 1] [--folds K] [--epochs 40] [--warm-start] [--full-pool-epochs N] [--resume]
       [--out bench-out/al_uhcs]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import fresh, parser, project, require_data


def main() -> int:
    args_parser = parser(__doc__, "al_uhcs", dataset="uhcs")
    args_parser.add_argument("--seeds", type=int, default=3)
    args_parser.add_argument("--rounds", type=int, default=2)
    args_parser.add_argument("--initial", type=int, default=16)
    args_parser.add_argument("--batch", type=int, default=48)
    args_parser.add_argument("--strategies", nargs="+", default=["entropy"])
    args_parser.add_argument("--epochs", type=int, default=40, help="epochs per round")
    args_parser.add_argument(
        "--class-balanced",
        action="store_true",
        help="al.class_balanced: uncertainty about a phase rare among the labels so far counts more",
    )
    args_parser.add_argument("--members", type=int, default=1, help="ensemble members (k-fold)")
    args_parser.add_argument(
        "--folds", type=int, help="k of the members' k-fold (default: one per member; 1: every member sees all labels)"
    )
    args_parser.add_argument(
        "--warm-start",
        action="store_true",
        help="each round fine-tunes the last round's members (default: every round from fresh weights)",
    )
    args_parser.add_argument(
        "--full-pool-epochs",
        type=int,
        help="epochs for the whole-pool reference (default: as many as the final round's "
        "model has had, so it is a ceiling)",
    )
    args_parser.add_argument(
        "--resume",
        action="store_true",
        help="keep --out and go on with the experiment there (finished rounds are not re-run)",
    )
    args = args_parser.parse_args()
    data = require_data(args.data)

    from microal.active.simulate import Simulation, simulate
    from microal.inference.evaluate import format_table

    started = time.time()
    out = Path(args.out).resolve() if args.resume else fresh(args.out)
    config, _ = project(
        "uhcs.yaml",
        {
            "tiling.scale": 0.5,
            "tiling.tile_size": 64,
            "tiling.margin": 16,
            "model.options": {"decoder_channels": [128, 64, 32, 16, 8]},
            "training.epochs": args.epochs,
            "training.samples_per_epoch": 64,
            "training.batch_size": 8,
            "training.augmentation": "basic",
            "training.lr": 0.003,
            "al.members": args.members,
            "al.class_balanced": args.class_balanced,
            "al.folds": args.folds,
            "al.reduction": "mean",
            "al.diversity": "kcenter",
            "al.per_image_cap": 4,
            "al.score_batch_size": 128,
            "al.warm_start": args.warm_start,
        },
        data / "manifest.csv",
        out,
    )
    sim = Simulation(
        args.initial,
        args.batch,
        args.rounds,
        tuple(args.strategies),
        args.seeds,
        full_pool_epochs=args.full_pool_epochs,
    )
    curve, summary, full = simulate(config, out / "tiles", out / "sim", sim)
    print(format_table(summary))
    print(f"curve: {out / 'sim' / 'curve.png'}")

    acquisitions = summary[summary.strategy != "random"]
    best = acquisitions.iloc[0]
    random = summary.set_index("strategy").loc["random"]
    minutes = (time.time() - started) / 60
    print(f"minutes={minutes:.1f}")
    print(
        f"al_uhcs aulc_best={best.strategy}:{best.aulc:.4f} aulc_random={random.aulc:.4f} full_pool_miou={full:.4f} "
        f"frac_tiles_to_95pct={best.strategy}:{best.frac_tiles_to_95pct:.3f} random:{random.frac_tiles_to_95pct:.3f} "
        f"aulc_gap_ci90={best.aulc_gap_ci90_low:.4f},{best.aulc_gap_ci90_high:.4f} minutes={minutes:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
