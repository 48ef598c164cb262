"""Pre-training benchmark on UHCS.

Pre-trains the encoder on UHCS tiles without masks, (a) self-supervised (SimCLR) and (b) with
an image-level classification head on the `microconstituent` column (spheroidite vs
spheroidite+widmanstatten), then fine-tunes with only 4 labelled images (encoder lr x 0.1),
against random initialisation with the same 4. The four test4A images (and the four images
sharing their samples) take no part in pre-training or fine-tuning; they are scored at full size.
Last line:

    pretrain_uhcs miou_random_init=<x> miou_ssl=<y> miou_cls_head=<z> minutes=<m>

Usage: python benchmarks/pretrain_uhcs.py [--out bench-out/pretrain_uhcs] [--pretrain-epochs N] [--epochs N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import REPO, fresh, parser, require_data
from common import UHCS_TEST as TEST

# Four labelled images from four samples, each with some of every class.
FINE_TUNE = ["uhcs0075.tif", "uhcs0124.tif", "uhcs0357.tif", "uhcs1528.tif"]
VALIDATE = ["uhcs0220.tif", "uhcs0596.tif", "uhcs1150.tif"]


def main() -> int:
    args_parser = parser(__doc__, "pretrain_uhcs", dataset="uhcs")
    args_parser.add_argument("--pretrain-epochs", type=int, default=30)
    args_parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs")
    args = args_parser.parse_args()
    data = require_data(args.data)

    import pandas as pd

    from microal.config import apply_overrides, load_config
    from microal.data.catalog import ingest
    from microal.data.tiles import build_tiles
    from microal.inference.evaluate import evaluate_predictions
    from microal.inference.predict import predict_catalog
    from microal.training.jobs import pretrain, train
    from microal.workspace import Workspace

    started = time.time()
    out = fresh(args.out)
    ws = Workspace.at(out)

    # A manifest with this benchmark's roles; image paths point into ../shared (nothing copied).
    manifest = pd.read_csv(data / "manifest.csv")
    for column in ("image", "mask"):
        manifest[column] = [str(data / p) for p in manifest[column]]
    names = manifest.image.map(lambda p: Path(p).name)
    manifest["role"] = names.map(
        lambda n: "test" if n in TEST else "train" if n in FINE_TUNE else "val" if n in VALIDATE else "pool"
    )
    manifest.to_csv(out / "manifest.csv", index=False)

    # Dotted overrides go through the config's validation (model_copy would skip it).
    config = apply_overrides(
        load_config(REPO / "examples" / "uhcs.yaml"),
        {
            "tiling.tile_size": 96,
            "tiling.margin": 16,
            # Pre-training sees the pool (train role here) but never the test images or their samples.
            "split.method": "column",
            "split.column": "role",
            "split.train_values": ["train", "pool"],
            "split.val_values": ["val"],
            "split.test": {"column": "image_name", "values": TEST},
            "pretrain.epochs": args.pretrain_epochs,
            "pretrain.batch_size": 32,
            "pretrain.samples_per_epoch": 384,
            "pretrain.augmentation": "extended",
            "pretrain.label_column": "microconstituent",
        },
        source="benchmark settings",
    )
    catalog, _ = ingest(out / "manifest.csv", config, ws.catalog, progress=False)
    build_tiles(catalog, config, ws.tiles, progress=False)

    encoders = {"random_init": None}
    for method, key in (("simclr", "ssl"), ("classification", "cls_head")):
        pre = apply_overrides(config, {"pretrain.method": method}, source="benchmark settings")
        summary = pretrain(pre, ws.tiles, ws.run(f"pretrain-{key}"), str(ws.ray_storage), f"pretrain-{key}")
        encoders[key] = summary.best_model

    # Fine-tuning: only the four FINE_TUNE images are trained on.
    fine = apply_overrides(
        config,
        {
            "split.train_values": ["train"],
            "training.epochs": args.epochs,
            "training.samples_per_epoch": 96,
            "training.encoder_lr_factor": 0.1,
        },
        source="benchmark settings",
    )
    results = {}
    for key, encoder in encoders.items():
        run_config = fine
        if encoder is None:  # random init: nothing to protect, the encoder learns at the full rate
            run_config = apply_overrides(fine, {"training.encoder_lr_factor": 1.0}, source="benchmark settings")
        else:
            run_config = apply_overrides(fine, {"model.encoder_weights": str(encoder)}, source="benchmark settings")
        name = f"finetune-{key}"
        summary = train(run_config, ws.tiles, ws.run(name), str(ws.ray_storage), name)
        splits = pd.read_csv(summary.run_dir / "splits.csv")
        assert sorted(splits[splits.split == "train"].image_name) == sorted(FINE_TUNE), (
            "fine-tuning set is not the four images"
        )
        test = catalog[catalog.image_name.isin(TEST)]
        predict_catalog(summary.best_model, test, ws.predictions(name), progress=False)
        result = evaluate_predictions(
            ws.predictions(name), catalog, config, ws.evaluation(name), overlays=False, progress=False
        )
        results[key] = float(result.per_domain.miou.iloc[0])
        print(f"{name}: test mIoU {results[key]:.3f}", flush=True)

    minutes = (time.time() - started) / 60
    print(
        f"pretrain_uhcs miou_random_init={results['random_init']:.3f} miou_ssl={results['ssl']:.3f} "
        f"miou_cls_head={results['cls_head']:.3f} minutes={minutes:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
