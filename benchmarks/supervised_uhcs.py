"""Supervised UHCS benchmark.

Holds out the four test4A images of UHCS (../shared/datasets/uhcs), drops the four other
images that share their samples, trains on the rest (Ray Train, CPU), predicts the held-out
images at full size and scores them. Last line:

    uhcs miou=<0..1> iou=<c0>,<c1>,<c2>,<c3> minutes=<m>

Usage: python benchmarks/supervised_uhcs.py [--out bench-out/supervised_uhcs] [--epochs N] [--precision fp32]
"""

from __future__ import annotations

import sys
import time

from common import REPO, fresh, parser, require_data
from common import UHCS_TEST as TEST_IMAGES


def main() -> int:
    args_parser = parser(__doc__, "supervised_uhcs", dataset="uhcs")
    args_parser.add_argument("--epochs", type=int, help="override training.epochs")
    args_parser.add_argument("--precision", help="override training.precision (auto, fp32, bf16)")
    args = args_parser.parse_args()
    data = require_data(args.data)

    from microal.config import apply_overrides, load_config
    from microal.data.catalog import ingest
    from microal.data.tiles import build_tiles
    from microal.inference.evaluate import evaluate_predictions, format_table
    from microal.inference.predict import predict_catalog
    from microal.training.jobs import train
    from microal.workspace import Workspace

    started = time.time()
    ws = Workspace.at(fresh(args.out))
    config = load_config(REPO / "examples" / "uhcs.yaml")
    assert sorted(config.split.test.values) == sorted(TEST_IMAGES), "examples/uhcs.yaml must hold out test4A"
    overrides = {"training.epochs": args.epochs, "training.precision": args.precision}
    config = apply_overrides(
        config, {key: value for key, value in overrides.items() if value}, source="--epochs/--precision"
    )

    catalog, _ = ingest(data / "manifest.csv", config, ws.catalog, progress=False)
    build_tiles(catalog, config, ws.tiles, progress=False)
    summary = train(config, ws.tiles, ws.run("uhcs"), str(ws.ray_storage), "uhcs")

    splits = summary.run_dir / "splits.csv"
    import pandas as pd

    roles = pd.read_csv(splits).set_index("image_name")["split"]
    trained_on = set(roles[roles.isin(["train", "val"])].index)
    leaked = trained_on & set(TEST_IMAGES)
    assert not leaked, f"test images in training: {leaked}"
    test_samples = set(catalog[catalog.image_name.isin(TEST_IMAGES)]["sample"])
    assert not (set(catalog[catalog.image_name.isin(trained_on)]["sample"]) & test_samples), "sample leakage"
    print(
        f"trained on {sorted(trained_on)}; excluded (same samples as test): {sorted(roles[roles == 'excluded'].index)}"
    )

    test = catalog[catalog.image_name.isin(TEST_IMAGES)]
    predict_catalog(summary.best_model, test, ws.predictions("uhcs"), progress=False)
    result = evaluate_predictions(ws.predictions("uhcs"), catalog, config, ws.evaluation("uhcs"), progress=False)
    print(
        format_table(
            result.per_image[["image_name", "split", "miou"] + [c for c in result.per_image if c.startswith("iou_")]]
        )
    )
    row = result.per_domain.iloc[0]
    iou = ",".join(f"{row[f'iou_{name}']:.3f}" for name in config.class_names)
    minutes = (time.time() - started) / 60
    print(f"uhcs miou={row.miou:.3f} iou={iou} minutes={minutes:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
