"""`microal predict`, `evaluate`, `compare`: full-size masks from a model and what they are worth."""

from __future__ import annotations

from pathlib import Path

from microal.cli.common import add_config, project_config, workspace
from microal.errors import MicroalError


def cmd_predict(args) -> None:
    from microal.data.catalog import read_catalog
    from microal.inference.predict import PREDICTIONS_TABLE, member_model_files, predict_catalog, select_images
    from microal.models.model_file import MODEL_FILE

    ws = workspace(args)
    if args.ensemble:
        models = member_model_files(args.ensemble)
    else:
        models = [Path(args.model) if args.model else ws.run(args.name) / f"best_{MODEL_FILE}"]
    catalog = select_images(read_catalog(ws.catalog), models[0], split=args.split, images=args.images)
    if args.domain:
        catalog = catalog[catalog.domain.isin(args.domain)]
    if catalog.empty:
        raise MicroalError("no catalog image matches the selection")
    out = Path(args.out) if args.out else ws.predictions(args.name)
    table = predict_catalog(models, catalog, out, tta=args.tta)
    members = f" with an ensemble of {len(models)}" if len(models) > 1 else ""
    print(
        f"wrote {len(table)} masks{members} to {out / 'masks'}, uncertainty maps to {out / 'uncertainty'}; "
        f"phase fractions with 95% intervals: {out / PREDICTIONS_TABLE}"
    )


def cmd_evaluate(args) -> None:
    from microal.data.catalog import read_catalog
    from microal.inference.evaluate import evaluate_predictions, format_table

    ws = workspace(args)
    predictions = Path(args.predictions) if args.predictions else ws.predictions(args.name)
    out = Path(args.out) if args.out else ws.evaluation(args.name)
    result = evaluate_predictions(
        predictions,
        read_catalog(ws.catalog),
        project_config(args),
        out,
        source_domain=args.source_domain,
        source_miou=args.source_miou,
        overlays=not args.no_overlays,
    )
    print(format_table(result.per_domain))
    print(f"tables: {out / 'per_image.csv'}, {out / 'per_domain.csv'}; overlays: {out / 'overlays'}")


def cmd_compare(args) -> None:
    from microal.data.catalog import read_catalog
    from microal.inference.compare import compare_runs
    from microal.inference.evaluate import format_table

    ws = workspace(args)
    out = Path(args.out) if args.out else ws.evaluation("compare-" + "-".join(args.runs))
    table = compare_runs(
        ws,
        read_catalog(ws.catalog),
        project_config(args),
        args.runs,
        out,
        source_domain=args.source_domain,
        figure_domain=args.figure_domain,
    )
    print(format_table(table))
    print(f"table: {out / 'compare.csv'}; overlays side by side: {out / 'compare.png'}")


def cmd_saliency(args) -> None:
    import pandas as pd

    from microal.data.catalog import read_catalog
    from microal.data.imageio import read_catalog_image
    from microal.inference.predict import select_images
    from microal.inference.saliency import segmentation_grad_cam
    from microal.models.model_file import MODEL_FILE, load_model
    from microal.plots import saliency_figure

    ws = workspace(args)
    model_file = Path(args.model) if args.model else ws.run(args.name) / f"best_{MODEL_FILE}"
    model = load_model(model_file)
    names = model.config.class_names
    unknown = sorted(set(args.classes or []) - set(names))
    if unknown:
        raise MicroalError(f"--classes: {unknown} not in the model's classes {names}")
    catalog = select_images(read_catalog(ws.catalog), model_file, split=None, images=args.images)
    out = ws.saliency(args.name)
    for _, row in catalog.iterrows():
        image = read_catalog_image(row, model.config.ingest)
        um_per_px = None if pd.isna(row.um_per_px) else float(row.um_per_px)
        overlays = [
            (f"Grad-CAM: {name}", segmentation_grad_cam(model, image, um_per_px, names.index(name), str(row.domain)))
            for name in (args.classes or names)
        ]
        path = out / f"{Path(row.image_name).stem}.png"
        saliency_figure(image, overlays, path, title=f"{row.image_name}: where the encoder sees each class")
        print(f"{row.image_name} -> {path}")


def add_saliency(p) -> None:
    p.add_argument("--name", default="run", help="run whose best model to use")
    p.add_argument("--model", help="a model file instead of the run's best_model.pt")
    p.add_argument("--images", nargs="+", metavar="NAME", required=True, help="images (file names or stems)")
    p.add_argument("--classes", nargs="+", help="classes to show (default: all)")


def add_predict(p) -> None:
    p.add_argument("--name", default="run", help="run whose best model to use")
    p.add_argument("--model", help="a model file instead of the run's best_model.pt")
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="PATH",
        help="predict with the members' mean probabilities: model files, run folders, or an active-learning "
        "round folder (its members.json)",
    )
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "unlabelled"],
        help="only the images of this split of the model's run (unlabelled: images without a mask)",
    )
    p.add_argument("--images", nargs="+", metavar="NAME", help="only these images (file names or stems)")
    p.add_argument("--domain", nargs="*", help="only images of these domains")
    p.add_argument("--out", help="output folder (default <workdir>/predictions/NAME)")
    p.add_argument(
        "--tta",
        choices=["none", "flips", "dihedral"],
        help="test-time augmentation instead of the model's own (model.tta): the mean of 4 flipped or "
        "8 flipped and rotated views of each window",
    )


def add_evaluate(p) -> None:
    add_config(p)
    p.add_argument("--name", default="run")
    p.add_argument("--predictions", help="predictions folder (default <workdir>/predictions/NAME)")
    p.add_argument("--out", help="output folder (default <workdir>/evaluation/NAME)")
    p.add_argument("--source-domain", help="domain whose held-out mIoU is the RDT reference")
    p.add_argument("--source-miou", type=float, help="a source mIoU to use as the RDT reference instead")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")


def add_compare(p) -> None:
    add_config(p)
    p.add_argument("--runs", nargs="+", required=True, help="run names to compare")
    p.add_argument("--source-domain", help="domain whose held-out mIoU is the RDT reference")
    p.add_argument("--figure-domain", help="show images of this domain in the figure (default: any)")
    p.add_argument("--out", help="output folder (default <workdir>/evaluation/compare-RUNS)")
