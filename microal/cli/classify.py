"""`microal classify train | predict | evaluate | rank | saliency | sites | al`: whole micrographs by
class, with "none of these"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from microal.cli.classify_al import add_classify_al
from microal.cli.common import (
    add_address,
    add_config,
    add_storage_path,
    add_workdir,
    project_config,
    storage_path,
    workspace,
)
from microal.config import apply_overrides
from microal.errors import MicroalError

SPLITS = ("test", "val", "train", "unlabelled", "all")


def cmd_train(args) -> None:
    from microal.classify.train import train_classifier

    ws = workspace(args)
    config = project_config(args)
    if args.workers is not None:
        config = apply_overrides(config, {"training.num_workers": args.workers}, source="command line")
    run = train_classifier(
        config,
        ws.catalog,
        ws.run(args.name),
        storage_path(args, ws),
        args.name,
        resume=args.resume,
        address=args.address,
    )
    accuracy = run.best_metrics.get("val_accuracy", float("nan"))
    print(f"classification: best epoch {int(run.best_metrics.get('epoch', 0))}: val_accuracy {accuracy:.3f}")
    print(
        f"'none of these' below log-likelihood {run.open_set.threshold:.2f} "
        f"(set on {run.open_set.threshold_from} crops)"
    )
    print(f"output: {run.best_classifier}\ndescriptor plane: {run.run_dir / 'embedding.png'}")


def _images(args):
    """The classifier file and the catalog rows to use: named images, the unlabelled ones (no
    image label), all, or a split of the run (from the splits table beside the classifier)."""
    from microal.classify.classifier_file import CLASSIFIER_FILE
    from microal.data.catalog import read_catalog
    from microal.inference.predict import select_images

    ws = workspace(args)
    catalog = read_catalog(ws.catalog)
    model = Path(args.model) if args.model else ws.run(args.name) / f"best_{CLASSIFIER_FILE}"
    if args.images:
        return model, select_images(catalog, model, images=args.images)
    if args.split == "all":
        return model, catalog
    if args.split == "unlabelled":
        labels = catalog.label.astype("string").str.strip() if "label" in catalog else None
        return model, catalog if labels is None else catalog[labels.isna() | (labels == "")]
    chosen = select_images(catalog, model, split=args.split)
    if chosen.empty:
        raise MicroalError(f"run {args.name!r} has no {args.split} images")
    return model, chosen


def cmd_predict(args) -> None:
    from microal.classify.classifier_file import load_classifier
    from microal.classify.predict import predict_images, write_predictions

    model, images = _images(args)
    classifier = load_classifier(model)
    table = predict_images(classifier, images, crops=args.crops)
    path = write_predictions(table, workspace(args).predictions(args.name))
    counts = table.decision.value_counts()
    print(f"{len(table)} image(s): {', '.join(f'{c} {n}' for c, n in counts.items())}")
    print(f"predictions: {path}")


def cmd_evaluate(args) -> None:
    from microal.classify.classifier_file import load_classifier
    from microal.classify.evaluate import classification_metrics, write_evaluation
    from microal.classify.predict import predict_images

    model, images = _images(args)
    classifier = load_classifier(model)
    labelled = images[images.label.notna()] if "label" in images else images.iloc[:0]
    if labelled.empty:
        raise MicroalError("classify evaluate: none of these images has a label")
    table = predict_images(classifier, labelled, crops=args.crops)
    result = classification_metrics(table, labelled.label.reset_index(drop=True), classifier.classes)
    out = write_evaluation(result, table.assign(label=labelled.label.to_numpy()), workspace(args).evaluation(args.name))
    metrics = result["metrics"]
    auroc = metrics["open_set_auroc"]
    print(
        f"{metrics['images']} image(s): accuracy {metrics['accuracy']:.3f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.3f}"
        + (f", open-set AUROC {auroc:.3f}" if auroc == auroc else "")  # (nan: no image of an unknown class)
    )
    print("recall: " + ", ".join(f"{c} {r:.2f}" for c, r in result["recall"].items()))
    print(result["confusion"].to_string())
    print(f"evaluation: {out}")


def cmd_rank(args) -> None:
    from microal.classify.acquire import rank_images
    from microal.classify.classifier_file import load_classifier
    from microal.classify.predict import predict_images
    from microal.files import atomic_path

    model, images = _images(args)
    table = predict_images(load_classifier(model), images, crops=args.crops)
    ranked = rank_images(table, by=args.by, k=args.k)
    path = workspace(args).predictions(args.name) / f"next_by_{args.by}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ranked.to_csv(tmp, index=False)
    for _, row in ranked.iterrows():
        print(f"{row['rank']:3d}. {row.image_name}: {args.by} {row[args.by]:.3f} (now: {row.decision})")
    print(f"ranking: {path}")


def cmd_saliency(args) -> None:
    from microal.classify.classifier_file import load_classifier
    from microal.classify.labels import NONE_CLASS
    from microal.classify.saliency import classifier_grad_cam, evidence_map
    from microal.data.imageio import read_catalog_image
    from microal.plots import saliency_figure

    model, images = _images(args)
    classifier = load_classifier(model)
    if classifier.open_set is None:
        raise MicroalError(f"{model}: no open set in the classifier file (its training did not finish)")
    names = [*classifier.classes, NONE_CLASS]
    out = workspace(args).saliency(args.name)
    for _, row in images.iterrows():
        image = read_catalog_image(row, classifier.config.ingest)
        evidence = evidence_map(classifier, image, float(row.um_per_px), crops=args.crops or 400)
        share = evidence.reshape(len(names), -1).mean(axis=1)
        decision = int(np.argmax(share))
        shown = decision if decision < len(classifier.classes) else int(np.argmax(share[:-1]))
        overlays = [(f"evidence: {names[shown]}", evidence[shown]), ("evidence: none of these", evidence[-1])]
        overlays.append(
            (f"Grad-CAM: {names[shown]}", classifier_grad_cam(classifier, image, float(row.um_per_px), shown))
        )
        path = out / f"{Path(row.image_name).stem}.png"
        saliency_figure(
            image, overlays, path, title=f"{row.image_name}: {names[decision]} ({share[decision]:.0%} of the evidence)"
        )
        print(f"{row.image_name}: {names[decision]} -> {path}")


def cmd_sites(args) -> None:
    from microal.classify.classifier_file import CLASSIFIER_FILE, load_classifier
    from microal.classify.labels import NONE_CLASS
    from microal.classify.sites import classify_sites, site_densities
    from microal.data.panorama import find_sites, open_panorama
    from microal.files import atomic_path
    from microal.plots import sites_overview

    ws = workspace(args)
    classifier = load_classifier(args.model or ws.run(args.name) / f"best_{CLASSIFIER_FILE}")
    if classifier.open_set is None:
        raise MicroalError(f"{classifier.path}: no open set in the classifier file (its training did not finish)")
    settings = project_config(args).classify.sites if args.config else classifier.config.classify.sites
    panorama = open_panorama(args.panorama, args.um_per_px)
    height, width = panorama.shape
    print(
        f"{panorama.path.name}: {width}x{height} px at {panorama.um_per_px} µm/px, "
        f"read {settings.block_px} rows at a time"
    )
    sites = find_sites(panorama, settings)
    print(f"{len(sites)} candidate site(s) of {settings.min_area_um2}-{settings.max_area_um2} µm²")
    classified = classify_sites(classifier, panorama, sites, settings)
    densities = site_densities(classified, panorama, classifier.classes)
    out = ws.sites(args.name) / Path(args.panorama).stem
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("sites.csv", classified), ("densities.csv", densities)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    sites_overview(
        panorama.thumbnail(),
        panorama.thumbnail_step,
        classified,
        [*classifier.classes, NONE_CLASS],
        out / "overview.png",
    )
    print(densities.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"sites: {out / 'sites.csv'}; densities: {out / 'densities.csv'}; overview: {out / 'overview.png'}")


def add_classify(p) -> None:
    sub = p.add_subparsers(dest="classify_command", required=True, metavar="STEP")

    def step(name, help_text, handler):
        q = sub.add_parser(name, help=help_text, description=help_text)
        add_workdir(q)
        q.add_argument("--name", required=True, help="the classification run")
        q.set_defaults(handler=handler)
        return q

    q = step("train", "train the metric embedding (Ray Train), then a Gaussian mixture per class", cmd_train)
    add_config(q)
    add_address(q)
    add_storage_path(q, "the run's checkpoints")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    q.add_argument("--workers", type=int, help="Ray Train workers (overrides training.num_workers)")
    for name, help_text, handler in (
        ("predict", "each image's class distribution and decision (or 'none') from many crops", cmd_predict),
        ("evaluate", "accuracy, recall per class, confusion matrix, open-set AUROC on labelled images", cmd_evaluate),
    ):
        q = step(name, help_text, handler)
        q.add_argument("--model", help="a classifier file (default runs/<name>/best_classifier.pt)")
        q.add_argument("--split", choices=SPLITS, default="test", help="images of this split of the run (default test)")
        q.add_argument("--images", nargs="+", help="these images instead (file names or stems)")
        q.add_argument("--crops", type=int, help="crops per image (default classify.predict_crops)")
    q = step("rank", "unlabelled micrographs an expert should label next, by entropy or novelty", cmd_rank)
    q.add_argument("--model", help="a classifier file (default runs/<name>/best_classifier.pt)")
    q.add_argument("--split", choices=SPLITS, default="unlabelled", help="images to rank (default: the unlabelled)")
    q.add_argument("--images", nargs="+", help="these images instead (file names or stems)")
    q.add_argument("--crops", type=int, help="crops per image (default classify.predict_crops)")
    q.add_argument("--by", choices=["entropy", "novelty"], default="entropy")
    q.add_argument("--k", type=int, default=8, help="how many to list (default 8)")
    q = step("saliency", "where each class's evidence sits: the crops' evidence map and Grad-CAM, as PNG", cmd_saliency)
    q.add_argument("--model", help="a classifier file (default runs/<name>/best_classifier.pt)")
    q.add_argument("--split", choices=SPLITS, default="test", help="images of this split of the run (default test)")
    q.add_argument("--images", nargs="+", help="these images instead (file names or stems)")
    q.add_argument("--crops", type=int, help="overlapping crops per image for the evidence map (default 400)")
    q = step("sites", "find candidate sites in a large panorama, classify each, and their density per mm²", cmd_sites)
    q.add_argument("--panorama", required=True, help="a stitched panorama (TIFF, read lazily)")
    q.add_argument("--um-per-px", type=float, required=True, help="the panorama's pixel size")
    q.add_argument("--model", help="a classifier file (default runs/<name>/best_classifier.pt)")
    add_config(q, required=False)
    q.set_defaults(config=None)
    add_classify_al(sub)
