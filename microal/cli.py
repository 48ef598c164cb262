"""The `microal` command: a table of subcommands, each a small function.

Every command works inside a work folder (``--workdir``, default ``microal-work``):
catalog.parquet, tiles/, runs/<name>/, predictions/<name>/, evaluation/<name>/.
"""

from __future__ import annotations

import argparse
import os
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

    _training_command(args, train, "training")


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


def _training_command(args, function, label: str) -> None:
    ws = Workspace.at(args.workdir)
    config = _config(args)
    if getattr(args, "workers", None) is not None:
        config = config.model_copy(update={"training": config.training.model_copy(update={"num_workers": args.workers})})
    if getattr(args, "method", None):
        config = config.model_copy(update={"uda": config.uda.model_copy(update={"method": args.method})})
    kwargs = {"init_model": args.init_model} if hasattr(args, "init_model") else {}
    summary = function(
        config, ws.tiles, ws.run(args.name), args.storage_path or str(ws.ray_storage), args.name,
        resume=args.resume, address=args.address, **kwargs,
    )
    metrics = summary.best_metrics
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val_miou", "target_miou", "target_entropy", "val_accuracy", "train_loss") if k in metrics)
    print(f"{label}: best epoch {int(metrics.get('epoch', 0))}: {shown}")
    print(f"output: {summary.best_model}\nlearning curve: {summary.run_dir / 'learning_curve.png'}")


def cmd_adapt(args) -> None:
    from microal.train import adapt

    _training_command(args, adapt, "adaptation")


def cmd_pretrain(args) -> None:
    from microal.train import pretrain

    _training_command(args, pretrain, "pre-training")
    print("use it with model.encoder_weights: <that file> and a low training.encoder_lr_factor (0.1)")


def cmd_tune(args) -> None:
    from microal.evaluate import format_table
    from microal.tune import tune
    from microal.tune_space import load_space

    ws = Workspace.at(args.workdir)
    space = load_space(args.space)
    config = _config(args)
    if args.epochs:
        section = "pretrain" if space.job == "pretrain" else "training"
        config = config.model_copy(update={section: getattr(config, section).model_copy(update={"epochs": args.epochs})})
    if args.metric or args.mode:
        space = space.model_copy(update={k: v for k, v in (("metric", args.metric), ("mode", args.mode)) if v})
    summary = tune(
        config, space, ws.tiles, ws.root / "tune" / args.name, args.storage_path or str(ws.ray_storage), args.name,
        trials=args.trials, concurrency=args.concurrency, resume=args.resume, address=args.address,
        search=args.search, scheduler=args.scheduler, grace_period=args.grace_period, seed=args.seed,
        reduction_factor=args.reduction_factor,
    )
    print("top trials:\n" + format_table(summary.results.head(args.top)))
    print(f"results: {summary.out_dir / 'results.csv'}; curves: {summary.out_dir / 'trials.png'}")
    if summary.best_config is not None:
        print(f"best config (for microal train --config): {summary.out_dir / 'best_config.yaml'}")


def _al_project(args, create: bool = False):
    from microal.al_project import init_project, load_project

    ws = Workspace.at(args.workdir)
    root = ws.root / "al" / args.name
    if create:
        return init_project(root, _config(args), ws.tiles)
    if not (root / "pool.parquet").exists():
        raise MicroalError(f"no active-learning project {args.name!r} in {ws.root / 'al'}; run `microal al init` first")
    return load_project(root, _config(args), ws.tiles)


def cmd_al_init(args) -> None:
    project = _al_project(args, create=True)
    counts = project.pool.counts()
    print(f"pool {project.root}: {counts['labelled']} tiles labelled (from expert masks), {counts['unlabelled']} unlabelled")


def cmd_al_ensemble(args) -> None:
    from microal.al_project import train_round_ensemble
    from microal.evaluate import format_table

    project = _al_project(args)
    members = None
    if args.from_search:
        import pandas as pd

        from microal.ensemble import ensemble_from_search
        from microal.tune_space import load_space

        ws = Workspace.at(args.workdir)
        results = ws.root / "tune" / args.from_search / "results.csv"
        if not results.exists():
            raise MicroalError(f"{results}: no results of search {args.from_search!r}")
        metric, mode = "val_miou", "max"
        if args.space:
            space = load_space(args.space)
            metric, mode = space.metric, space.mode
        members = ensemble_from_search(ws.ray_storage, args.from_search, pd.read_csv(results), args.top, metric, mode)
    ensemble, report = train_round_ensemble(project, address=args.address, members=members)
    print(f"round {project.current_round}: ensemble {ensemble.version} of {len(ensemble.members)} members")
    if report is not None:
        print("held-out tiles, ensemble against each member:\n" + format_table(report))


def cmd_al_score(args) -> None:
    from microal.al_project import score_round

    project = _al_project(args)
    if args.address:
        from microal import ray_backend

        ray_backend.init_ray(args.address)
    table = score_round(project)
    folder = project.round_dir(project.current_round)
    summary = table.groupby("acquisition").score.describe()[["count", "mean", "max"]]
    print(f"score table: {folder / 'scores.parquet'}\n{summary.to_string()}")


def cmd_al_select(args) -> None:
    from microal.al_project import select_round
    from microal.evaluate import format_table

    project = _al_project(args)
    selection = select_round(project, k=args.k, acquisition=args.acquisition)
    print(format_table(selection[["tile_id", "image_id", "domain", "row", "col", "score"]]))
    print(f"selection: {project.round_dir(project.current_round) / 'selection.csv'}")


def cmd_al_simulate(args) -> None:
    from microal.al_simulate import Simulation, simulate
    from microal.evaluate import format_table

    ws = Workspace.at(args.workdir)
    config = _config(args)
    sim = Simulation(args.initial, args.batch or config.al.batch_size, args.rounds, tuple(args.strategies), args.seeds,
                     full_pool_epochs=args.full_pool_epochs)
    out = ws.root / "al" / args.name
    curve, summary, full = simulate(config, ws.tiles, out, sim, address=args.address)
    print(format_table(summary))
    print(f"whole pool labelled: mIoU {full:.4f} (mean over {sim.seeds} seed(s))\ncurve: {out / 'curve.csv'}, {out / 'curve.png'}")


def _ls_target(args, project):
    from microal.al_loop import connect
    from microal.labelstudio_client import LabelStudioClient
    from microal.labelstudio_server import read_token

    url = args.url or project.config.labelstudio.url
    client = LabelStudioClient(url, read_token(args.token_file))
    client.check()
    return connect(project, client, Workspace.at(args.workdir).root)


def cmd_al_push(args) -> None:
    from microal.al_loop import push
    from microal.ensemble import Ensemble

    project = _al_project(args)
    folder = project.round_dir(project.current_round)
    if not (folder / "selection.csv").exists():
        raise MicroalError(f"no selection in {folder}; run `microal al select` first")
    import pandas as pd

    report = push(project, _ls_target(args, project), pd.read_csv(folder / "selection.csv"), Ensemble.load(folder))
    print(f"queued {len(report.created)} tiles ({len(report.already_there)} were in Label Studio already)")


def cmd_al_pull(args) -> None:
    from microal.al_loop import label_cost, pull
    from microal.evaluate import format_table

    project = _al_project(args)
    report = pull(project, _ls_target(args, project))
    print(f"labelled {len(report.labelled)}, updated {len(report.updated)}, rejected {len(report.rejected)}, "
          f"waiting for more annotators {len(report.waiting)}")
    print(f"pool: {project.pool.counts()}\nexpert time per round:\n{format_table(label_cost(project))}")


def cmd_al_run(args) -> None:
    from microal.al_loop import WebhookListener, run_loop

    project = _al_project(args)
    target = _ls_target(args, project)
    port = args.webhook_port or project.config.labelstudio.webhook_port
    listener = None
    if port:
        listener = WebhookListener(port)
        target.client.ensure_webhook(target.project_id, listener.url)
        print(f"listening for Label Studio webhooks on {listener.url}", flush=True)
    else:
        print(f"polling Label Studio every {project.config.labelstudio.poll_seconds:.0f} s", flush=True)
    try:
        run_loop(project, target, until_round=args.until_round, address=args.address, listener=listener)
    finally:
        if listener is not None:
            listener.close()


def cmd_labelstudio_config(args) -> None:
    from microal.labelstudio_config import label_config

    print(label_config(_config(args)), end="")


def cmd_labelstudio_serve(args) -> None:
    import signal
    import time

    from microal.labelstudio_server import TOKEN_ENV, new_token_file, read_token, start_server

    data_dir = Path(args.data_dir).resolve()
    token_file = Path(args.token_file) if args.token_file else data_dir / "token"
    if args.token_file or os.environ.get(TOKEN_ENV):
        token = read_token(args.token_file)
    elif token_file.exists():
        token = read_token(token_file)
    else:
        token = new_token_file(token_file)
        print(f"new API token written to {token_file} (readable by you only)")
    files_root = Path(args.files_root or args.workdir).resolve()
    extra = {"SSRF_PROTECTION_ENABLED": "false"} if args.allow_local_webhooks else {}
    print(f"starting Label Studio on 127.0.0.1:{args.port} (data {data_dir}, tiles served from {files_root}) ...", flush=True)

    def interrupt(*_):
        raise KeyboardInterrupt

    # SIGTERM as Ctrl-C from the start: a stop while Label Studio is still starting must stop it too.
    signal.signal(signal.SIGTERM, interrupt)
    server = None
    try:
        server = start_server(data_dir, args.port, files_root, token, username=args.username, extra_env=extra)
        print(f"Label Studio is up: {server.url}  (user {args.username}; stop with Ctrl-C)", flush=True)
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping
        if server is not None:
            server.stop()
        print("Label Studio stopped")


def cmd_compare(args) -> None:
    from microal.catalog import read_catalog
    from microal.compare import compare_runs
    from microal.evaluate import format_table

    ws = Workspace.at(args.workdir)
    out = Path(args.out) if args.out else ws.evaluation("compare-" + "-".join(args.runs))
    table = compare_runs(ws, read_catalog(ws.catalog), _config(args), args.runs, out,
                         source_domain=args.source_domain, figure_domain=args.figure_domain)
    print(format_table(table))
    print(f"table: {out / 'compare.csv'}; overlays side by side: {out / 'compare.png'}")


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


def _add_ray_job(p):
    _add_config(p)
    p.add_argument("--name", default="run", help="run name (also the Ray Train run name)")
    p.add_argument("--resume", action="store_true", help="continue run NAME from its latest checkpoint")
    p.add_argument("--workers", type=int, help="override training.num_workers")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--storage-path", help="where Ray keeps checkpoints (default <workdir>/ray_results; s3://... on a cluster)")


def _add_train(p):
    _add_ray_job(p)
    p.add_argument("--init-model", help="a microal model file to start from (fine-tuning)")


def _add_adapt(p):
    _add_train(p)
    p.add_argument("--method", choices=["adaptsegnet", "advent", "source_only"], help="override uda.method")


def _add_tune(p):
    _add_config(p)
    p.add_argument("--space", required=True, help="search space file, e.g. tune_spaces/supervised.yaml")
    p.add_argument("--trials", type=int, default=8, help="number of trials")
    p.add_argument("--concurrency", type=int, default=1, help="trials at a time")
    p.add_argument("--metric", help="override the space's metric (reported each epoch)")
    p.add_argument("--mode", choices=["max", "min"], help="override the space's mode")
    p.add_argument("--name", default="search", help="search name (stable: --resume finds it)")
    p.add_argument("--resume", action="store_true", help="continue a stopped search without re-running finished trials")
    p.add_argument("--epochs", type=int, help="override the epochs of each trial (ASHA's max_t)")
    p.add_argument("--search", choices=["tpe", "random"], default="tpe", help="Optuna sampler (default tpe, seeded)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha", help="early stopping (default asha)")
    p.add_argument("--grace-period", type=int, default=2, help="epochs before ASHA may stop a trial")
    p.add_argument("--reduction-factor", type=int, default=3, choices=range(2, 9), metavar="{2..8}",
                   help="ASHA keeps the best 1/N of trials at each rung (grace, grace x N, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5, help="rows of the final table")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--storage-path", help="where Ray keeps trials (default <workdir>/ray_results; s3://... on a cluster)")


def _add_al(p):
    sub = p.add_subparsers(dest="al_command", required=True, metavar="STEP")

    def step(name, help_text, handler):
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--workdir", "-w", default=DEFAULT_WORKDIR, help=f"work folder (default {DEFAULT_WORKDIR})")
        _add_config(q)
        q.add_argument("--name", default="al", help="active-learning project (or experiment) name")
        q.set_defaults(handler=handler)
        return q

    step("init", "create the pool: masked images start labelled, the rest unlabelled", cmd_al_init)
    q = step("ensemble", "train the round's k-fold ensemble on everything labelled (Ray Train)", cmd_al_ensemble)
    q.add_argument("--address", help="Ray cluster address")
    q.add_argument("--from-search", help="instead of training, take the best trials of this `microal tune` search")
    q.add_argument("--top", type=int, default=3, help="how many of the search's trials (with --from-search)")
    q.add_argument("--space", help="the search's space file (for its metric and mode; default val_miou, max)")
    q = step("score", "score the unlabelled tiles with the ensemble (Ray actors) into a score table", cmd_al_score)
    q.add_argument("--address", help="Ray cluster address")
    q = step("select", "choose the next batch from the score table", cmd_al_select)
    q.add_argument("--k", type=int, help="tiles to choose (default al.batch_size)")
    q.add_argument("--acquisition", help="which scores to rank by (default al.acquisition)")
    for name, help_text, handler in (
        ("push", "queue the round's selection in Label Studio with pre-annotations", cmd_al_push),
        ("pull", "bring finished annotations back into the label store", cmd_al_pull),
        ("run", "keep the loop going: pull, retrain, rescore, push, by itself", cmd_al_run),
    ):
        q = step(name, help_text, handler)
        q.add_argument("--url", help="Label Studio URL (default labelstudio.url)")
        q.add_argument("--token-file", help="file holding the API token (default: LABEL_STUDIO_TOKEN)")
        if name == "run":
            q.add_argument("--until-round", type=int, help="stop after this round's ensemble is trained and its batch pushed")
            q.add_argument("--webhook-port", type=int, help="listen for webhooks on 127.0.0.1:PORT (default: poll)")
            q.add_argument("--address", help="Ray cluster address")
    q = step("simulate", "oracle experiment: acquisition strategies against random on held-out mIoU", cmd_al_simulate)
    q.add_argument("--initial", type=int, default=8, help="labelled tiles to start from")
    q.add_argument("--batch", type=int, help="tiles revealed per round (default al.batch_size)")
    q.add_argument("--rounds", type=int, default=4)
    q.add_argument("--strategies", nargs="+", default=["bald", "entropy"], help="acquisitions (random is always added)")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--full-pool-epochs", type=int,
                   help="epochs for the whole-pool reference (default: as many as the final round's model has had)")
    q.add_argument("--address", help="Ray cluster address")


def _add_labelstudio(p):
    sub = p.add_subparsers(dest="ls_command", required=True, metavar="STEP")
    q = sub.add_parser("config", help="print the labelling config made from the class table")
    _add_config(q)
    q.set_defaults(handler=cmd_labelstudio_config)
    q = sub.add_parser("serve", help="run a local Label Studio (its own venv) on 127.0.0.1 until Ctrl-C")
    q.add_argument("--data-dir", default="labelstudio-data", help="Label Studio's data folder (SQLite database)")
    q.add_argument("--port", type=int, default=8080)
    q.add_argument("--workdir", "-w", default=DEFAULT_WORKDIR, help="served as the Local Files root unless --files-root")
    q.add_argument("--files-root", help="LOCAL_FILES_DOCUMENT_ROOT: tiles for experts must be below it")
    q.add_argument("--token-file", help="API token file (default: LABEL_STUDIO_TOKEN, else DATA_DIR/token, made if missing)")
    q.add_argument("--username", default="expert@microal.local", help="the first user (created at the first start)")
    q.add_argument("--allow-local-webhooks", action="store_true", help="let Label Studio call webhooks on 127.0.0.1")
    q.set_defaults(handler=cmd_labelstudio_serve)


def _add_compare(p):
    _add_config(p)
    p.add_argument("--runs", nargs="+", required=True, help="run names to compare")
    p.add_argument("--source-domain", help="domain whose held-out mIoU is the RDT reference")
    p.add_argument("--figure-domain", help="show images of this domain in the figure (default: any)")
    p.add_argument("--out", help="output folder (default <workdir>/evaluation/compare-RUNS)")


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
_IN_WORKDIR = {"ingest", "tile", "train", "adapt", "pretrain", "tune", "predict", "evaluate", "compare"}

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "synth": ("generate a synthetic two-domain micrograph set with exact masks", _add_synth, cmd_synth),
    "ingest": ("register micrographs, masks and metadata in the catalog", _add_ingest, cmd_ingest),
    "tile": ("resample to one physical scale and cut overlapping tiles", lambda p: _add_config(p), cmd_tile),
    "train": ("supervised training as a Ray Train job", _add_train, cmd_train),
    "adapt": ("unsupervised domain adaptation (AdaptSegNet, ADVENT) as a Ray Train job", _add_adapt, cmd_adapt),
    "pretrain": ("encoder pre-training (classification head or SimCLR) as a Ray Train job", _add_ray_job, cmd_pretrain),
    "tune": ("hyperparameter search: Ray Tune + Optuna TPE + ASHA, each trial a Ray Train job", _add_tune, cmd_tune),
    "predict": ("full-size masks and phase fractions from a trained model", _add_predict, cmd_predict),
    "evaluate": ("mIoU, per-class IoU, phase-fraction error, RDT, overlays", _add_evaluate, cmd_evaluate),
    "al": ("active learning: init, ensemble, score, select, push, pull, run, simulate", _add_al, None),
    "labelstudio": ("a local Label Studio server, and the labelling config", _add_labelstudio, None),
    "compare": ("score several runs on the same images: table and overlays side by side", _add_compare, cmd_compare),
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
        if handler is not None:  # groups (al) set their steps' handlers
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
