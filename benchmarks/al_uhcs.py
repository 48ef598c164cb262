"""Active-learning benchmark on UHCS (issue 4): the oracle experiment, acquisitions against random.

UHCS at 0.5x scale (64 px tile centres), the four test4A images as the fixed held-out set (their
samples out of the pool), the other 16 micrographs' tiles as the pool with masks hidden; an
ensemble of k-fold members per round, on CPU. Last line:

    al_uhcs aulc_best=<strategy>:<value> aulc_random=<value> full_pool_miou=<value> frac_tiles_to_95pct=<strategy>:<f> random:<f>

AULC: area under held-out mIoU against labelled fraction of the pool, divided by the fraction's
range (a mean mIoU over the curve), averaged over seeds. frac_tiles_to_95pct: the pool fraction at
which mIoU first reaches 95% of the mIoU with the whole pool labelled (nan: not within the rounds).

One acquisition (entropy of the ensemble mean) against random by default: a round is about 95 s
on 2 cores (two members training side by side, ~15 s of it Ray Train start-up, then scoring the
pool), so 3 seeds x 2 strategies x 3 rounds of 32 tiles fit the 45 minutes; a second acquisition
(--strategies entropy bald) adds about 10 minutes.

Rounds are warm-started (al.warm_start): each round's members fine-tune the last round's for
10 x 64 windows, so training accumulates over rounds instead of every round being starved of steps
(--cold-start for the textbook variant). The whole-pool reference trains as long as the final
round's model has had in all (40 epochs), so that it is a ceiling.

Measured (3 seeds, 35.1 minutes): AULC entropy 0.438 vs random 0.427 (entropy ahead on 2 of 3
seeds); full-pool mIoU 0.506; at 29% of the pool the rounds reach 0.460-0.489 (95% is 0.481: one
seed of entropy gets there), so frac_tiles_to_95pct is nan; see the README.

Usage: python benchmarks/al_uhcs.py [--seeds 3] [--rounds 3] [--batch 32] [--strategies entropy]
       [--cold-start] [--full-pool-epochs N] [--resume] [--out bench-out/al_uhcs]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import fresh, parser, project, require_data


def main() -> int:
    args_parser = parser(__doc__, "al_uhcs", dataset="uhcs")
    args_parser.add_argument("--seeds", type=int, default=3)
    args_parser.add_argument("--rounds", type=int, default=3)
    args_parser.add_argument("--initial", type=int, default=16)
    args_parser.add_argument("--batch", type=int, default=32)
    args_parser.add_argument("--strategies", nargs="+", default=["entropy"])
    args_parser.add_argument("--epochs", type=int, default=10, help="epochs per round")
    args_parser.add_argument("--cold-start", action="store_true",
                             help="train every round from fresh weights (default: warm start from the last round)")
    args_parser.add_argument("--full-pool-epochs", type=int,
                             help="epochs for the whole-pool reference (default: as many as the final round's "
                                  "model has had, so it is a ceiling)")
    args_parser.add_argument("--resume", action="store_true",
                             help="keep --out and go on with the experiment there (finished rounds are not re-run)")
    args = args_parser.parse_args()
    data = require_data(args.data)

    from microal.al_simulate import Simulation, simulate
    from microal.evaluate import format_table

    started = time.time()
    out = Path(args.out).resolve() if args.resume else fresh(args.out)
    config, _ = project("uhcs.yaml", {
        "tiling.scale": 0.5, "tiling.tile_size": 64, "tiling.margin": 16,
        "model.options": {"decoder_channels": [128, 64, 32, 16, 8]},
        "training.epochs": args.epochs, "training.samples_per_epoch": 64, "training.batch_size": 8,
        "training.augmentation": "basic", "training.lr": 0.003,
        "al.members": 2, "al.reduction": "mean", "al.diversity": "kcenter", "al.per_image_cap": 4,
        "al.score_batch_size": 128, "al.warm_start": not args.cold_start,
    }, data / "manifest.csv", out)
    sim = Simulation(args.initial, args.batch, args.rounds, tuple(args.strategies), args.seeds,
                     full_pool_epochs=args.full_pool_epochs)
    curve, summary, full = simulate(config, out / "tiles", out / "sim", sim)
    print(format_table(summary))
    print(f"curve: {out / 'sim' / 'curve.png'}")

    acquisitions = summary[summary.strategy != "random"]
    best = acquisitions.iloc[0]
    random = summary.set_index("strategy").loc["random"]
    minutes = (time.time() - started) / 60
    print(f"minutes={minutes:.1f}")
    print(f"al_uhcs aulc_best={best.strategy}:{best.aulc:.4f} aulc_random={random.aulc:.4f} full_pool_miou={full:.4f} "
          f"frac_tiles_to_95pct={best.strategy}:{best.frac_tiles_to_95pct:.3f} random:{random.frac_tiles_to_95pct:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
