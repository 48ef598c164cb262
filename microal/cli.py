"""The `microal` command: a table of subcommands, each a small function.

Every command works inside a work folder (``--workdir``, default ``microal-work``):
catalog.parquet, tiles/, runs/<name>/, predictions/<name>/, evaluation/<name>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from microal.errors import MicroalError
from microal.workspace import Workspace

DEFAULT_WORKDIR = "microal-work"


def _config(args):
    from microal.config import load_config

    return load_config(args.config)


def cmd_synth(args) -> None:
    from microal.synth import generate

    manifest = generate(args.out, n_per_domain=(args.n_a, args.n_b), seed=args.seed)
    print(f"wrote {args.n_a + args.n_b} images with masks: {manifest}")
    print(f"config: {Path(args.out) / 'microal.yaml'}")


def cmd_ingest(args) -> None:
    from microal.catalog import ingest

    ws = Workspace.at(args.workdir)
    table, changed = ingest(args.path, _config(args), ws.catalog)
    state = "written" if changed else "unchanged"
    print(f"catalog {state}: {ws.catalog} ({len(table)} images, {int(table.labelled.sum())} with masks)")
    print(table.groupby("domain").agg(images=("image_id", "size"), labelled=("labelled", "sum")).to_string())


def cmd_tile(args) -> None:
    from microal.catalog import read_catalog
    from microal.tileset import build_tiles

    ws = Workspace.at(args.workdir)
    tileset = build_tiles(read_catalog(ws.catalog), _config(args), ws.tiles)
    print(f"tile set: {ws.tiles} ({len(tileset.images)} images, {len(tileset.tiles)} tiles of "
          f"{tileset.tiling.tile_size}+2x{tileset.tiling.margin} px)")


def cmd_train(args) -> None:
    from microal.train import train

    ws = Workspace.at(args.workdir)
    config = _config(args)
    if args.workers is not None:
        config = config.model_copy(update={"training": config.training.model_copy(update={"num_workers": args.workers})})
    summary = train(
        config, ws.tiles, ws.run(args.name), args.storage_path or str(ws.ray_storage), args.name,
        resume=args.resume, address=args.address, init_model=args.init_model,
    )
    metrics = summary.best_metrics
    print(f"best epoch {int(metrics.get('epoch', 0))}: val mIoU {metrics.get('val_miou', float('nan')):.4f}")
    print(f"model: {summary.best_model}\nlearning curve: {summary.run_dir / 'learning_curve.png'}")


def cmd_predict(args) -> None:
    from microal.catalog import read_catalog
    from microal.predict import predict_catalog

    ws = Workspace.at(args.workdir)
    model = Path(args.model) if args.model else ws.run(args.name) / "best_model.pt"
    catalog = read_catalog(ws.catalog)
    if args.domain:
        catalog = catalog[catalog.domain.isin(args.domain)]
    if catalog.empty:
        raise MicroalError("no catalog image matches the selection")
    out = Path(args.out) if args.out else ws.predictions(args.name)
    table = predict_catalog(model, catalog, out)
    print(f"wrote {len(table)} masks to {out / 'masks'}; phase fractions: {out / 'predictions.csv'}")


def cmd_evaluate(args) -> None:
    from microal.catalog import read_catalog
    from microal.evaluate import evaluate_predictions, format_table

    ws = Workspace.at(args.workdir)
    predictions = Path(args.predictions) if args.predictions else ws.predictions(args.name)
    out = Path(args.out) if args.out else ws.evaluation(args.name)
    result = evaluate_predictions(
        predictions, read_catalog(ws.catalog), _config(args), out,
        source_domain=args.source_domain, source_miou=args.source_miou, overlays=not args.no_overlays,
    )
    print(format_table(result.per_domain))
    print(f"tables: {out / 'per_image.csv'}, {out / 'per_domain.csv'}; overlays: {out / 'overlays'}")


def cmd_demo(args) -> None:
    from microal.demo import run_demo

    run_demo(args.out, epochs=args.epochs)


def _add_synth(p):
    p.add_argument("out", help="folder to write images/, masks/, manifest.csv and microal.yaml into")
    p.add_argument("--n-a", type=int, default=10, help="images of domain A (SEM-like)")
    p.add_argument("--n-b", type=int, default=4, help="images of domain B (light-optical-like)")
    p.add_argument("--seed", type=int, default=0)


def _add_config(p, required=True):
    p.add_argument("--config", "-c", required=required, help="project YAML (classes, ingest, tiling, split, model, training)")


def _add_ingest(p):
    p.add_argument("path", help="a folder of micrographs or a CSV manifest")
    _add_config(p)


def _add_train(p):
    _add_config(p)
    p.add_argument("--name", default="run", help="run name (also the Ray Train run name)")
    p.add_argument("--resume", action="store_true", help="continue run NAME from its latest checkpoint")
    p.add_argument("--workers", type=int, help="override training.num_workers")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--storage-path", help="where Ray keeps checkpoints (default <workdir>/ray_results; s3://... on a cluster)")
    p.add_argument("--init-model", help="a microal model file to start from (fine-tuning)")


def _add_predict(p):
    p.add_argument("--name", default="run", help="run whose best model to use")
    p.add_argument("--model", help="a model file instead of the run's best_model.pt")
    p.add_argument("--domain", nargs="*", help="only images of these domains")
    p.add_argument("--out", help="output folder (default <workdir>/predictions/NAME)")


def _add_evaluate(p):
    _add_config(p)
    p.add_argument("--name", default="run")
    p.add_argument("--predictions", help="predictions folder (default <workdir>/predictions/NAME)")
    p.add_argument("--out", help="output folder (default <workdir>/evaluation/NAME)")
    p.add_argument("--source-domain", help="domain whose held-out mIoU is the RDT reference")
    p.add_argument("--source-miou", type=float, help="a source mIoU to use as the RDT reference instead")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")


def _add_demo(p):
    p.add_argument("--out", help="folder for everything the demo makes (default microal-demo-<time>)")
    p.add_argument("--epochs", type=int, help="override the training epochs (default from the synthetic config)")


# Commands that work inside a work folder get --workdir.
_IN_WORKDIR = {"ingest", "tile", "train", "predict", "evaluate"}

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "synth": ("generate a synthetic two-domain micrograph set with exact masks", _add_synth, cmd_synth),
    "ingest": ("register micrographs, masks and metadata in the catalog", _add_ingest, cmd_ingest),
    "tile": ("resample to one physical scale and cut overlapping tiles", lambda p: _add_config(p), cmd_tile),
    "train": ("supervised training as a Ray Train job", _add_train, cmd_train),
    "predict": ("full-size masks and phase fractions from a trained model", _add_predict, cmd_predict),
    "evaluate": ("mIoU, per-class IoU, phase-fraction error, RDT, overlays", _add_evaluate, cmd_evaluate),
    "demo": ("synth -> ingest -> tile -> train -> predict -> evaluate on generated data", _add_demo, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microal",
        description="From steel micrographs to trained segmentation models with the fewest expert hours.",
        epilog="Run `microal COMMAND --help` for a command's options; `microal demo` shows the whole pipeline.",
    )
    workdir = argparse.ArgumentParser(add_help=False)
    workdir.add_argument("--workdir", "-w", default=DEFAULT_WORKDIR, help=f"work folder (default {DEFAULT_WORKDIR})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments, handler) in COMMANDS.items():
        parents = [workdir] if name in _IN_WORKDIR else []
        p = sub.add_parser(name, help=summary, description=summary, parents=parents)
        add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except MicroalError as error:
        print(f"microal {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"microal {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
