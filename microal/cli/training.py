"""`microal train`, `adapt`, `pretrain` (a Ray Train job each) and `tune` (a search of them)."""

from __future__ import annotations

from microal.cli.common import add_address, add_config, add_storage_path, project_config, storage_path, workspace
from microal.config import apply_overrides


def _run_job(args, kind: str) -> None:
    from microal.training.jobs import job_kind, run

    ws = workspace(args)
    config = project_config(args)
    overrides = {}
    if getattr(args, "workers", None) is not None:
        overrides["training.num_workers"] = args.workers
    if getattr(args, "method", None):
        overrides["uda.method"] = args.method
    if overrides:
        config = apply_overrides(config, overrides, source="command line")
    summary = run(
        kind,
        config,
        ws.tiles,
        ws.run(args.name),
        storage_path(args, ws),
        args.name,
        resume=args.resume,
        address=args.address,
        init_model=getattr(args, "init_model", None),
    )
    metrics = summary.best_metrics
    kind_ = job_kind(kind)
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in kind_.summary if k in metrics)
    print(f"{kind_.label}: best epoch {int(metrics.get('epoch', 0))}: {shown}")
    print(f"output: {summary.best_model}\nlearning curve: {summary.run_dir / 'learning_curve.png'}")


def cmd_train(args) -> None:
    _run_job(args, "supervised")


def cmd_adapt(args) -> None:
    _run_job(args, "uda")


def cmd_pretrain(args) -> None:
    _run_job(args, "pretrain")
    print("use it with model.encoder_weights: <that file> and a low training.encoder_lr_factor (0.1)")


def cmd_tune(args) -> None:
    from microal.inference.evaluate import format_table
    from microal.training.jobs import job_kind
    from microal.training.search import BEST_CONFIG_FILE, RESULTS_FILE, tune
    from microal.training.search_space import load_space

    ws = workspace(args)
    space = load_space(args.space)
    config = project_config(args)
    if args.epochs:
        config = apply_overrides(config, {job_kind(space.job).epochs_key: args.epochs}, source="--epochs")
    if args.metric or args.mode:
        space = space.model_copy(update={k: v for k, v in (("metric", args.metric), ("mode", args.mode)) if v})
    summary = tune(
        config,
        space,
        ws.tiles,
        ws.tune(args.name),
        storage_path(args, ws),
        args.name,
        trials=args.trials,
        concurrency=args.concurrency,
        resume=args.resume,
        address=args.address,
        search=args.search,
        scheduler=args.scheduler,
        grace_period=args.grace_period,
        seed=args.seed,
        reduction_factor=args.reduction_factor,
    )
    print("top trials:\n" + format_table(summary.results.head(args.top)))
    print(f"results: {summary.out_dir / RESULTS_FILE}; curves: {summary.out_dir / 'trials.png'}")
    if summary.best_config is not None:
        print(f"best config (for microal train --config): {summary.out_dir / BEST_CONFIG_FILE}")


def add_pretrain(p) -> None:
    add_config(p)
    p.add_argument("--name", default="run", help="run name (also the Ray Train run name)")
    p.add_argument("--resume", action="store_true", help="continue run NAME from its latest checkpoint")
    p.add_argument("--workers", type=int, help="override training.num_workers")
    add_address(p)
    add_storage_path(p, "checkpoints")


def add_train(p) -> None:
    add_pretrain(p)
    p.add_argument("--init-model", help="a microal model file to start from (fine-tuning)")


def add_adapt(p) -> None:
    add_train(p)
    p.add_argument("--method", choices=["adaptsegnet", "advent", "source_only"], help="override uda.method")


def add_tune(p) -> None:
    add_config(p)
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
    p.add_argument(
        "--reduction-factor",
        type=int,
        default=3,
        choices=range(2, 9),
        metavar="{2..8}",
        help="ASHA keeps the best 1/N of trials at each rung (grace, grace x N, ...)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5, help="rows of the final table")
    add_address(p)
    add_storage_path(p, "trials")
