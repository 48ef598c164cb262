"""Domain adaptation benchmark on NASA Super.

Source = domain A (Super1 train, validated on Super1 val), target = domain B (Super2
different_test: other alloys and imaging conditions), used WITHOUT labels for adaptation and
with labels only for scoring. Source-only, AdaptSegNet and ADVENT runs of the same loop, for
several seeds, on CPU. Last line:

    uda_nasa miou_source_only=<x> miou_adaptsegnet=<y> miou_advent=<z> rdt_source_only=<a> rdt_best=<b> minutes=<m>

mIoU values are target-domain mIoU averaged over seeds; RDT = (target - source) / source with
the source reference = source-only mIoU on Super1 test (held out).

The adapted models predict target images with target batch-norm statistics (uda.target_bn_statistics);
as an ablation the source-only model with those statistics alone (AdaBN) is scored too and printed
before the last line.

Usage: python benchmarks/uda_nasa.py [--seeds 2] [--epochs N] [--methods ...] [--set uda.weight_adv=0.01 ...]
       [--out bench-out/uda_nasa]
"""

from __future__ import annotations

import shutil
import sys
import time

from common import REPO, fresh, parser, require_data

METHODS = ["source_only", "adaptsegnet", "advent"]


def main() -> int:
    args_parser = parser(__doc__, "uda_nasa", dataset="nasa-super")
    args_parser.add_argument("--seeds", type=int, default=2)
    args_parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one")
    args_parser.add_argument("--epochs", type=int, help="override training.epochs")
    args_parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args_parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more config overrides, YAML values (uda.weight_adv=0.01)",
    )
    args = args_parser.parse_args()
    data = require_data(args.data)

    import pandas as pd
    import yaml

    from microal.config import apply_overrides, load_config
    from microal.data.catalog import ingest
    from microal.data.tiles import build_tiles
    from microal.inference.compare import compare_runs
    from microal.inference.evaluate import evaluate_predictions, format_table
    from microal.inference.predict import predict_catalog
    from microal.models.metrics import relative_domain_transferability
    from microal.training.jobs import adapt, add_target_bn_statistics
    from microal.workspace import Workspace

    started = time.time()
    out = fresh(args.out)
    ws = Workspace.at(out)
    overrides = dict(BENCH_SETTINGS)
    if args.epochs:
        overrides["training.epochs"] = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    base = apply_overrides(load_config(REPO / "examples" / "nasa-super.yaml"), overrides, source="benchmark settings")

    catalog, _ = ingest(data / "manifest.csv", base, ws.catalog, progress=False)
    build_tiles(catalog, base, ws.tiles, progress=False)
    scored = catalog[catalog.split.isin(["test", "different_test"])]

    rows = []

    def score(method: str, seed: int, config) -> None:
        name = f"{method}-s{seed}"
        predict_catalog(ws.run(name) / "best_model.pt", scored, ws.predictions(name), progress=False)
        result = evaluate_predictions(
            ws.predictions(name), catalog, config, ws.evaluation(name), overlays=False, progress=False
        )
        per = result.per_domain.set_index("domain")
        rows.append(
            {
                "method": method,
                "seed": seed,
                "miou_source_test": per.loc["A", "miou"],
                "miou_target": per.loc["B", "miou"],
                **{f"target_{c}": per.loc["B", c] for c in per.columns if c.startswith("iou_")},
            }
        )
        print(
            f"{name}: source test mIoU {rows[-1]['miou_source_test']:.3f}, target mIoU {rows[-1]['miou_target']:.3f}",
            flush=True,
        )

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in args.methods:
            name = f"{method}-s{seed}"
            config = apply_overrides(base, {"training.seed": seed, "uda.method": method}, source="benchmark settings")
            adapt(config, ws.tiles, ws.run(name), str(ws.ray_storage), name)
            score(method, seed, config)
            if method == "source_only":
                # The ablation that says where the gain comes from: the source-only model with
                # target batch-norm statistics alone (AdaBN, no adversarial training).
                ablation = ws.run(f"adabn_only-s{seed}")
                ablation.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ws.run(name) / "best_model.pt", ablation / "best_model.pt")
                add_target_bn_statistics([ablation / "best_model.pt"], config, ws.tiles)
                score("adabn_only", seed, config)

    table = pd.DataFrame(rows)
    table.to_csv(out / "uda_nasa.csv", index=False)
    means = table.groupby("method")[["miou_source_test", "miou_target"]].mean()
    print(format_table(table))
    if "adabn_only" in means.index:
        print(
            "ablation: source-only + target batch-norm statistics alone, "
            f"target mIoU {means.loc['adabn_only', 'miou_target']:.3f}"
        )
    if list(args.methods) != METHODS:
        print(format_table(means.reset_index()))
        return 0
    compare_runs(
        ws,
        catalog,
        base,
        [f"{m}-s{args.first_seed}" for m in METHODS],
        ws.evaluation("compare"),
        source_domain="A",
        figure_domain="B",
        figure_images=3,
    )
    print(f"side-by-side overlays: {ws.evaluation('compare') / 'compare.png'}")

    source_reference = means.loc["source_only", "miou_source_test"]
    best = max(["adaptsegnet", "advent"], key=lambda m: means.loc[m, "miou_target"])
    rdt_source = relative_domain_transferability(means.loc["source_only", "miou_target"], source_reference)
    rdt_best = relative_domain_transferability(means.loc[best, "miou_target"], source_reference)
    minutes = (time.time() - started) / 60
    print(
        f"uda_nasa miou_source_only={means.loc['source_only', 'miou_target']:.3f} "
        f"miou_adaptsegnet={means.loc['adaptsegnet', 'miou_target']:.3f} "
        f"miou_advent={means.loc['advent', 'miou_target']:.3f} "
        f"rdt_source_only={rdt_source:.3f} rdt_best={rdt_best:.3f} minutes={minutes:.1f}"
    )
    return 0


# Benchmark-sized settings (CPU, 45 minutes for 3 methods x 2 seeds).
BENCH_SETTINGS = {
    "tiling.tile_size": 96,
    "tiling.margin": 16,
    "model.options": {"decoder_channels": [128, 64, 32, 16, 8]},
    "training.epochs": 20,
    "training.batch_size": 8,
    "training.samples_per_epoch": 128,
}


if __name__ == "__main__":
    sys.exit(main())
