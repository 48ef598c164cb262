"""The self-configuring plan against the hand-written configs, at the same time budget.

For UHCS (../shared/datasets/uhcs; the test4A hold-out and the images of its samples kept out)
and NASA Super domain A (../shared/datasets/nasa-super; Super1 test held out), two fits each:

- plan: the example config's class table, ingest and split only, `auto: all` and
  `training.budget` (no tiling, model or training setting written by hand);
- hand: the example config as written (examples/uhcs.yaml, examples/nasa-super.yaml) with the
  same `training.budget` deciding its epochs.

Each fit is trained (Ray Train, CPU), its best model predicts the held-out images at full size
(with its own model.tta, and once more the other way: without test-time augmentation where it
has some, with the 8 dihedral views where it has none), and they are scored. Last line:

    plan uhcs_miou=<x> uhcs_hand=<y> nasa_miou=<x> nasa_hand=<y> minutes=<m> budget=<b> seed=<s>

Usage: python benchmarks/plan_crossdata.py [--budget 6min] [--only uhcs|nasa] [--seed 0]
"""

from __future__ import annotations

import sys
import time

from common import REPO, SHARED, UHCS_TEST, fresh, parser, require_data

# What a new lab writes for its own data set: the class table, how to read its files, the split.
KEPT_SECTIONS = ("classes", "ingest", "split", "preprocess")
DATASETS = {
    "uhcs": ("uhcs.yaml", "uhcs"),
    "nasa": ("nasa-super.yaml", "nasa-super"),
}


def configs(example: str, budget: str, seed: int):
    import yaml

    from microal.config import apply_overrides, load_config, parse_config

    raw = yaml.safe_load((REPO / "examples" / example).read_text())
    plan = {k: v for k, v in raw.items() if k in KEPT_SECTIONS}
    plan.update(auto="all", training={"budget": budget, "seed": seed})
    hand = apply_overrides(
        load_config(REPO / "examples" / example),
        {"training.budget": budget, "training.epochs": 10_000, "training.seed": seed},
    )
    return parse_config(plan, source=f"plan config from {example}"), hand


def held_out(name: str, catalog):
    if name == "uhcs":
        return catalog[catalog.image_name.isin(UHCS_TEST)]
    return catalog[(catalog.split == "test") & (catalog.domain.astype(str) == "A")]


def fit_and_score(name: str, label: str, config, manifest, out) -> float:
    import pandas as pd

    from microal.data.catalog import ingest
    from microal.data.tiles import build_tiles
    from microal.inference.evaluate import evaluate_predictions
    from microal.inference.predict import predict_catalog
    from microal.planning.plan import resolve
    from microal.training.jobs import train
    from microal.workspace import Workspace

    ws = Workspace.at(fresh(out / f"{name}-{label}"))
    catalog, _ = ingest(manifest, config, ws.catalog, progress=False)
    tiled = resolve(config, catalog, ws.root, progress=False, echo=False)  # what `microal tile` does
    build_tiles(catalog, tiled, ws.tiles, progress=False)
    started = time.time()
    summary = train(config, ws.tiles, ws.run(label), str(ws.ray_storage), label)
    fit_minutes = (time.time() - started) / 60
    test = held_out(name, catalog)
    assert len(test), f"{name}: no held-out image"
    roles = pd.read_csv(summary.run_dir / "splits.csv").set_index("image_id")["split"]
    assert not roles.loc[test.image_id].isin(["train", "val"]).any(), f"{name}: a test image was trained on"

    def score(tta: str | None, suffix: str):
        predict_catalog(summary.best_model, test, ws.predictions(label + suffix), progress=False, tta=tta)
        result = evaluate_predictions(
            ws.predictions(label + suffix), catalog, config, ws.evaluation(label + suffix), progress=False
        )
        return result.per_domain.iloc[0], len(result.per_image)  # the held-out images are of one domain

    scored, images = score(None, "")  # with the fit's own model.tta
    # The other way round too, so the note can tell what test-time augmentation alone is worth.
    own = tiled.model.tta
    other = "dihedral" if own == "none" else "none"
    other_scored, _ = score(other, f"-tta-{other}")
    miou = float(scored.miou)
    ious = {c: float(scored[f"iou_{c}"]) for c in config.class_names}
    epochs = int(summary.history.epoch.max())
    print(
        f"{name} {label}: test mIoU {miou:.3f} over {images} images (tta {own}; with tta {other}: "
        f"{float(other_scored.miou):.3f}); per class "
        + ", ".join(f"{c} {v:.3f}" for c, v in ious.items())
        + f"; {epochs} epochs in {fit_minutes:.1f} min",
        flush=True,
    )
    return miou


def main() -> int:
    p = parser(__doc__, "plan_crossdata")
    p.add_argument("--budget", default="6min", help="training.budget of every fit (default 6min)")
    p.add_argument("--only", choices=sorted(DATASETS), help="one data set only")
    p.add_argument(
        "--seed", type=int, default=0, help="training.seed of every fit (the split and held-out images stay the same)"
    )
    args = p.parse_args()
    out = fresh(args.out)
    started = time.time()
    results = {}
    for name, (example, folder) in DATASETS.items():
        if args.only and name != args.only:
            continue
        data = require_data(SHARED / folder)
        plan_config, hand_config = configs(example, args.budget, args.seed)
        results[f"{name}_miou"] = fit_and_score(name, "plan", plan_config, data / "manifest.csv", out)
        results[f"{name}_hand"] = fit_and_score(name, "hand", hand_config, data / "manifest.csv", out)
    minutes = (time.time() - started) / 60
    figures = " ".join(f"{k}={v:.3f}" for k, v in results.items())
    print(f"plan {figures} minutes={minutes:.1f} budget={args.budget} seed={args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
