"""Search efficiency benchmark: ASHA + TPE against plain random search.

Both searches run the same number of trials over tune_spaces/supervised.yaml's learning rates and
loss weight (augmentation fixed), two trials at a time with one CPU each (a trial's Ray Train
start-up, ~15 s, overlaps the other's training); the baseline runs every trial to the end (FIFO),
ASHA stops poor ones early. Validation mIoU on a grouped fold. Two tasks:

- `--task synth` (default): the synthetic two-domain set microal generates (24 domain-A images,
  64 px tile centres), 16 trials of 12 epochs.
- `--task uhcs`: UHCS at 0.5x scale (96 px tile centres), the four test4A images and their samples
  held out; slower, which is why the synthetic set is the default.

Measured figures: benchmarks/RESULTS.md.

Last line:

    tune best_tpe_asha=<metric> best_baseline=<metric> epochs_tpe_asha=<n> epochs_baseline=<n> minutes=<m> \
        minutes_tpe_asha=<m> minutes_baseline=<m>

(one line; minutes_* are each half's wall time: what ASHA saves in time, not only in epochs)

Usage: python benchmarks/tune_efficiency.py [--task synth|uhcs] [--trials N] [--epochs N] [--concurrency 2]
       [--reduction-factor 3]
"""

from __future__ import annotations

import sys
import time

from common import REPO, fresh, parser, project, require_data


def main() -> int:
    args_parser = parser(__doc__, "tune_efficiency", dataset="uhcs")
    args_parser.add_argument("--task", choices=["synth", "uhcs"], default="synth")
    args_parser.add_argument("--trials", type=int, help="default: 16 (synth), 12 (uhcs)")
    args_parser.add_argument("--epochs", type=int, help="default: 12 (synth), 6 (uhcs)")
    args_parser.add_argument("--concurrency", type=int, default=2)
    args_parser.add_argument("--reduction-factor", type=int, default=3)
    args = args_parser.parse_args()

    from microal.training.search import tune
    from microal.training.search_space import load_space

    started = time.time()
    out = fresh(args.out)
    if args.task == "uhcs":
        data = require_data(args.data)
        trials, epochs = args.trials or 12, args.epochs or 6
        config, _ = project(
            "uhcs.yaml",
            {
                "tiling.scale": 0.5,
                "tiling.tile_size": 96,
                "tiling.margin": 16,
                "training.epochs": epochs,
                "training.samples_per_epoch": 64,
                "training.augmentation": "basic",
                "training.class_weights": "balanced",
            },
            data / "manifest.csv",
            out,
        )
        task = "UHCS at 0.5x scale (real data)"
    else:
        from microal.data.synth import generate

        trials, epochs = args.trials or 16, args.epochs or 12
        generate(out / "data", n_per_domain=(24, 4))
        config, _ = project(
            out / "data" / "microal.yaml",
            {
                "tiling.tile_size": 64,
                "tiling.margin": 16,
                "training.epochs": epochs,
                "training.samples_per_epoch": 64,
                "training.augmentation": "basic",
            },
            out / "data" / "manifest.csv",
            out,
        )
        task = "the synthetic set microal generates"
    space = load_space(REPO / "tune_spaces" / "supervised.yaml")
    keep = {"training.lr", "training.encoder_lr_factor", "training.dice_weight"}
    space = space.model_copy(update={"params": {k: v for k, v in space.params.items() if k in keep}})

    results = {}
    for name, search, scheduler in (("tpe_asha", "tpe", "asha"), ("baseline", "random", "fifo")):
        half_started = time.time()
        summary = tune(
            config,
            space,
            out / "tiles",
            out / "tune" / name,
            str(out / "ray_results"),
            name,
            trials=trials,
            concurrency=args.concurrency,
            search=search,
            scheduler=scheduler,
            grace_period=1,
            seed=0,
            reduction_factor=args.reduction_factor,
        )
        table = summary.results
        results[name] = (float(table.best_val_miou.max()), int(table.epochs.sum()), (time.time() - half_started) / 60)
        print(
            f"{name}: best val mIoU {results[name][0]:.4f} with {results[name][1]} epochs in all, "
            f"{results[name][2]:.1f} min",
            flush=True,
        )

    minutes = (time.time() - started) / 60
    print(f"task: {task}, validation mIoU; {trials} trials of up to {epochs} epochs each, {args.concurrency} at a time")
    print(
        f"tune best_tpe_asha={results['tpe_asha'][0]:.4f} best_baseline={results['baseline'][0]:.4f} "
        f"epochs_tpe_asha={results['tpe_asha'][1]} epochs_baseline={results['baseline'][1]} minutes={minutes:.1f} "
        f"minutes_tpe_asha={results['tpe_asha'][2]:.1f} minutes_baseline={results['baseline'][2]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
