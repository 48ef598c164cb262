"""`microal al ...`: an active-learning project's steps, the expert loop and the oracle simulation."""

from __future__ import annotations

from microal.cli.common import add_address, add_config, add_workdir, project_config, workspace
from microal.errors import MicroalError


def _project(args, create: bool = False):
    from microal.active.folders import ProjectFolders
    from microal.active.images import is_image_project
    from microal.active.rounds import init_project, load_project

    ws = workspace(args)
    root = ws.al(args.name)
    if create:
        return init_project(root, project_config(args), ws.tiles)
    if not ProjectFolders(root).pool.exists():
        raise MicroalError(f"no active-learning project {args.name!r} in {ws.al_root}; run `microal al init` first")
    if is_image_project(root):
        raise MicroalError(f"{root}: an image project; its steps are `microal classify al ...`")
    return load_project(root, project_config(args), ws.tiles)


def cmd_init(args) -> None:
    project = _project(args, create=True)
    counts = project.pool.counts()
    print(
        f"pool {project.root}: {counts['labelled']} tiles labelled (from expert masks), "
        f"{counts['unlabelled']} unlabelled"
    )


def cmd_ensemble(args) -> None:
    from microal.active.rounds import train_round_ensemble
    from microal.inference.evaluate import format_table

    project = _project(args)
    members = None
    if args.from_search:
        from microal.active.ensemble import ensemble_from_search
        from microal.training.search_space import load_space

        ws = workspace(args)
        metric, mode = "val_miou", "max"
        if args.space:
            space = load_space(args.space)
            metric, mode = space.metric, space.mode
        members = ensemble_from_search(ws.ray_storage, ws.tune(args.from_search), args.top, metric, mode)
    ensemble, report = train_round_ensemble(project, address=args.address, members=members)
    print(f"round {project.current_round}: ensemble {ensemble.version} of {len(ensemble.members)} members")
    if report is not None:
        print("held-out tiles, ensemble against each member:\n" + format_table(report))


def cmd_score(args) -> None:
    from microal.active.folders import SCORES_FILE
    from microal.active.rounds import score_round
    from microal.backend import ray as ray_backend

    project = _project(args)
    ray_backend.init_ray(args.address)
    table = score_round(project)
    folder = project.round_dir(project.current_round)
    summary = table.groupby("acquisition").score.describe()[["count", "mean", "max"]]
    print(f"score table: {folder / SCORES_FILE}\n{summary.to_string()}")


def cmd_select(args) -> None:
    from microal.active.folders import SELECTION_FILE
    from microal.active.rounds import select_round
    from microal.inference.evaluate import format_table

    project = _project(args)
    selection = select_round(project, k=args.k, acquisition=args.acquisition, budget_minutes=args.minutes)
    columns = ["tile_id", "image_id", "domain", "row", "col", "score"]
    if "estimated_seconds" in selection:
        columns.append("estimated_seconds")
        print(f"{len(selection)} tiles, about {selection.estimated_seconds.sum() / 60:.1f} expert minutes")
    print(format_table(selection[columns]))
    print(f"selection: {project.round_dir(project.current_round) / SELECTION_FILE}")


def cmd_simulate(args) -> None:
    from microal.active.folders import SimulationFolders
    from microal.active.simulate import Simulation, simulate
    from microal.inference.evaluate import format_table

    ws = workspace(args)
    config = project_config(args)
    if args.budget_minutes:
        from microal.config import apply_overrides

        config = apply_overrides(config, {"al.budget_minutes": args.budget_minutes}, source="--budget-minutes")
    sim = Simulation(
        args.initial,
        args.batch or config.al.batch_size,
        args.rounds,
        tuple(args.strategies),
        args.seeds,
        full_pool_epochs=args.full_pool_epochs,
        initial_domains=tuple(args.initial_domains),
    )
    out = ws.al(args.name)
    curve, summary, full = simulate(config, ws.tiles, out, sim, address=args.address)
    folders = SimulationFolders(out)
    print(format_table(summary))
    print(
        f"whole pool labelled: mIoU {full:.4f} (mean over {sim.seeds} seed(s))\n"
        f"curve: {folders.curve}, {folders.curve_plot}"
    )


def _label_studio(args, project, xml: str | None = None):
    """The project's Label Studio target (labelling config `xml`, default the tiles' brushes)."""
    from microal.labelstudio.client import LabelStudioClient
    from microal.labelstudio.loop import connect
    from microal.labelstudio.server import read_token

    url = args.url or project.config.labelstudio.url
    client = LabelStudioClient(url, read_token(args.token_file))
    client.check()
    return connect(project, client, workspace(args).root, xml=xml)


def cmd_push(args) -> None:
    from microal.active.ensemble import Ensemble
    from microal.active.folders import SELECTION_FILE
    from microal.files import read_table
    from microal.labelstudio.loop import push

    project = _project(args)
    folder = project.round_dir(project.current_round)
    if not (folder / SELECTION_FILE).exists():
        raise MicroalError(f"no selection in {folder}; run `microal al select` first")
    report = push(project, _label_studio(args, project), read_table(folder / SELECTION_FILE), Ensemble.load(folder))
    print(f"queued {len(report.created)} tiles ({len(report.already_there)} were in Label Studio already)")


def pull_and_report(project, labeller) -> None:
    """Pull the experts' answers through `labeller` (tiles or images) and say what changed."""
    from microal.inference.evaluate import format_table
    from microal.labelstudio.loop import label_cost

    report = labeller.pull(project)
    print(
        f"labelled {len(report.labelled)}, updated {len(report.updated)}, rejected {len(report.rejected)}, "
        f"waiting for more annotators {len(report.waiting)}"
    )
    print(f"pool: {project.pool.counts()}\nexpert time per round:\n{format_table(label_cost(project))}")


def run_expert_loop(args, project, labeller) -> None:
    """`run_loop` with `labeller`, woken by Label Studio's webhook (--webhook-port) or polling."""
    from microal.labelstudio.loop import WebhookListener, run_loop

    target = labeller.target
    port = args.webhook_port or project.config.labelstudio.webhook_port
    listener = None
    if port:
        listener = WebhookListener(port)
        target.client.ensure_webhook(target.project_id, listener.url)
        print(f"listening for Label Studio webhooks on {listener.url}", flush=True)
    else:
        print(f"polling Label Studio every {project.config.labelstudio.poll_seconds:.0f} s", flush=True)
    try:
        run_loop(
            project, target, until_round=args.until_round, address=args.address, listener=listener, labeller=labeller
        )
    finally:
        if listener is not None:
            listener.close()


def cmd_pull(args) -> None:
    from microal.labelstudio.loop import LabelStudioLabeller

    project = _project(args)
    pull_and_report(project, LabelStudioLabeller(_label_studio(args, project)))


def cmd_run(args) -> None:
    from microal.labelstudio.loop import LabelStudioLabeller

    project = _project(args)
    run_expert_loop(args, project, LabelStudioLabeller(_label_studio(args, project)))


def add_labelstudio_options(q, run: bool) -> None:
    """Where Label Studio is; for `run`, when to stop and how to be woken."""
    q.add_argument("--url", help="Label Studio URL (default labelstudio.url)")
    q.add_argument("--token-file", help="file holding the API token (default: LABEL_STUDIO_TOKEN)")
    if run:
        q.add_argument("--until-round", type=int, help="stop after this round's model is trained and its batch pushed")
        q.add_argument("--webhook-port", type=int, help="listen for webhooks on 127.0.0.1:PORT (default: poll)")
        add_address(q)


def add_al(p) -> None:
    sub = p.add_subparsers(dest="al_command", required=True, metavar="STEP")

    def step(name, help_text, handler):
        q = sub.add_parser(name, help=help_text, description=help_text)
        add_workdir(q)
        add_config(q)
        q.add_argument("--name", default="al", help="active-learning project (or experiment) name")
        q.set_defaults(handler=handler)
        return q

    step("init", "create the pool: masked images start labelled, the rest unlabelled", cmd_init)
    q = step("ensemble", "train the round's k-fold ensemble on everything labelled (Ray Train)", cmd_ensemble)
    add_address(q)
    q.add_argument("--from-search", help="instead of training, take the best trials of this `microal tune` search")
    q.add_argument("--top", type=int, default=3, help="how many of the search's trials (with --from-search)")
    q.add_argument("--space", help="the search's space file (for its metric and mode; default val_miou, max)")
    q = step("score", "score the unlabelled tiles with the ensemble (Ray actors) into a score table", cmd_score)
    add_address(q)
    q = step("select", "choose the next batch from the score table", cmd_select)
    q.add_argument("--k", type=int, help="tiles to choose (default al.batch_size)")
    q.add_argument(
        "--acquisition", help="which scores to rank by (default al.acquisition, or random under al.random_until)"
    )
    q.add_argument(
        "--minutes", type=float, help="instead of --k: as many tiles as fit this much expert time (al.budget_minutes)"
    )
    for name, help_text, handler in (
        ("push", "queue the round's selection in Label Studio with pre-annotations", cmd_push),
        ("pull", "bring finished annotations back into the label store", cmd_pull),
        ("run", "keep the loop going: pull, retrain, rescore, push, by itself", cmd_run),
    ):
        add_labelstudio_options(step(name, help_text, handler), run=name == "run")
    q = step("simulate", "oracle experiment: acquisition strategies against random on held-out mIoU", cmd_simulate)
    q.add_argument("--initial", type=int, default=8, help="labelled tiles to start from")
    q.add_argument(
        "--initial-domains",
        nargs="+",
        default=[],
        metavar="DOMAIN",
        help="draw the initial tiles from these imaging domains only (a lab that has labelled its own "
        "microscope's micrographs and pools another's); default: the whole pool",
    )
    q.add_argument("--batch", type=int, help="tiles revealed per round (default al.batch_size)")
    q.add_argument("--rounds", type=int, default=4)
    q.add_argument("--strategies", nargs="+", default=["bald", "entropy"], help="acquisitions (random is always added)")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument(
        "--budget-minutes",
        type=float,
        help="each round takes as many tiles as fit this much (simulated) expert time, instead of --batch",
    )
    q.add_argument(
        "--full-pool-epochs",
        type=int,
        help="epochs for the whole-pool reference (default: as many as the final round's model has had)",
    )
    add_address(q)
