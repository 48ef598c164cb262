"""Search efficiency benchmark (issue 3): ASHA + TPE against plain random search.

A small real task: UHCS at reduced scale (0.5x, 96 px tile centres), the four test4A images and
their samples held out, validation mIoU on a grouped fold. Both searches run the same number of
trials over tune_spaces/supervised.yaml's learning rates and loss weight (augmentation fixed);
the baseline runs every trial to the end (FIFO), ASHA stops poor ones early. Last line:

    tune best_tpe_asha=<metric> best_baseline=<metric> epochs_tpe_asha=<n> epochs_baseline=<n> minutes=<m>

Usage: python benchmarks/tune_efficiency.py [--trials 12] [--epochs 6] [--reduction-factor 3] [--out bench-out/tune_efficiency]
"""

from __future__ import annotations

import sys
import time

from common import REPO, fresh, parser, project, require_data


def main() -> int:
    args_parser = parser(__doc__, "tune_efficiency", dataset="uhcs")
    args_parser.add_argument("--trials", type=int, default=12)
    args_parser.add_argument("--epochs", type=int, default=6)
    args_parser.add_argument("--reduction-factor", type=int, default=3)
    args = args_parser.parse_args()
    data = require_data(args.data)

    from microal.tune import tune
    from microal.tune_space import load_space

    started = time.time()
    out = fresh(args.out)
    config, _ = project("uhcs.yaml", {
        "tiling.scale": 0.5, "tiling.tile_size": 96, "tiling.margin": 16,
        "training.epochs": args.epochs, "training.samples_per_epoch": 64, "training.augmentation": "basic",
        "training.class_weights": "balanced",
    }, data / "manifest.csv", out)
    space = load_space(REPO / "tune_spaces" / "supervised.yaml")
    keep = {"training.lr", "training.encoder_lr_factor", "training.dice_weight"}
    space = space.model_copy(update={"params": {k: v for k, v in space.params.items() if k in keep}})

    results = {}
    for name, search, scheduler in (("tpe_asha", "tpe", "asha"), ("baseline", "random", "fifo")):
        summary = tune(config, space, out / "tiles", out / "tune" / name, str(out / "ray_results"), name,
                       trials=args.trials, concurrency=1, search=search, scheduler=scheduler, grace_period=1, seed=0,
                       reduction_factor=args.reduction_factor)
        table = summary.results
        results[name] = (float(table.best_val_miou.max()), int(table.epochs.sum()))
        print(f"{name}: best val mIoU {results[name][0]:.4f} with {results[name][1]} epochs in all", flush=True)

    minutes = (time.time() - started) / 60
    print("task: UHCS at 0.5x scale (real data), validation mIoU")
    print(f"tune best_tpe_asha={results['tpe_asha'][0]:.4f} best_baseline={results['baseline'][0]:.4f} "
          f"epochs_tpe_asha={results['tpe_asha'][1]} epochs_baseline={results['baseline'][1]} minutes={minutes:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
