"""`microal classify al init | pull | run`: image-level active learning with experts in Label
Studio: the pool's items are whole micrographs, each labelled with one class."""

from __future__ import annotations

from microal.cli.common import add_address, add_config, add_workdir, project_config, workspace
from microal.errors import MicroalError


def _project(args, create: bool = False):
    from microal.active.folders import ProjectFolders
    from microal.active.images import init_image_project, is_image_project, load_image_project

    ws = workspace(args)
    root = ws.al(args.name)
    if create:
        return init_image_project(root, project_config(args), ws.catalog)
    if not ProjectFolders(root).pool.exists():
        raise MicroalError(f"no image project {args.name!r} in {ws.al_root}; run `microal classify al init` first")
    if not is_image_project(root):
        raise MicroalError(f"{root}: a tile project (microal al ...), not an image project")
    return load_image_project(root, project_config(args), ws.catalog)


def _labeller(args, project):
    from microal.labelstudio.client import LabelStudioClient
    from microal.labelstudio.images import ImageLabelStudioLabeller, connect_images
    from microal.labelstudio.server import read_token

    client = LabelStudioClient(args.url or project.config.labelstudio.url, read_token(args.token_file))
    client.check()
    return ImageLabelStudioLabeller(connect_images(project, client, workspace(args).root))


def cmd_init(args) -> None:
    project = _project(args, create=True)
    counts = project.pool.counts()
    held_out = len(project.heldout_images())
    print(
        f"image pool {project.root}: {counts['labelled']} micrographs labelled (from the catalog), "
        f"{counts['unlabelled']} unlabelled; {held_out} held out for testing"
    )


def cmd_pull(args) -> None:
    from microal.inference.evaluate import format_table
    from microal.labelstudio.loop import label_cost

    project = _project(args)
    report = _labeller(args, project).pull(project)
    print(
        f"labelled {len(report.labelled)}, updated {len(report.updated)}, rejected {len(report.rejected)}, "
        f"waiting for more annotators {len(report.waiting)}"
    )
    print(f"pool: {project.pool.counts()}\nexpert time per round:\n{format_table(label_cost(project))}")


def cmd_run(args) -> None:
    from microal.labelstudio.loop import run_loop

    project = _project(args)
    labeller = _labeller(args, project)
    print(f"polling Label Studio every {project.config.labelstudio.poll_seconds:.0f} s", flush=True)
    run_loop(project, labeller.target, until_round=args.until_round, address=args.address, labeller=labeller)


def add_classify_al(sub) -> None:
    p = sub.add_parser(
        "al",
        help="image-level active learning: micrographs to classify, queued in Label Studio",
        description="Image-level active learning: rank unlabelled micrographs by the classifier's entropy "
        "or novelty (classify.acquisition), queue them in Label Studio with the decision pre-annotated, "
        "pull the experts' classes and retrain.",
    )
    steps = p.add_subparsers(dest="classify_al_command", required=True, metavar="STEP")

    def step(name, help_text, handler):
        q = steps.add_parser(name, help=help_text, description=help_text)
        add_workdir(q)
        add_config(q)
        q.add_argument("--name", default="images", help="the image project's name (default images)")
        q.set_defaults(handler=handler)
        return q

    step("init", "create the image pool: labelled micrographs start labelled, the rest unlabelled", cmd_init)
    for name, help_text, handler in (
        ("pull", "bring the experts' classes back into the image labels", cmd_pull),
        ("run", "keep the loop going: pull, retrain the classifier, rank, push, by itself", cmd_run),
    ):
        q = step(name, help_text, handler)
        q.add_argument("--url", help="Label Studio URL (default labelstudio.url)")
        q.add_argument("--token-file", help="file holding the API token (default: LABEL_STUDIO_TOKEN)")
        if name == "run":
            q.add_argument("--until-round", type=int, help="stop after this round's classifier is trained and pushed")
            add_address(q)
