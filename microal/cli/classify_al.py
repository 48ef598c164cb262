"""`microal classify al init | pull | run`: image-level active learning with experts in Label
Studio: the pool's items are whole micrographs, each labelled with one class."""

from __future__ import annotations

from microal.cli.active import add_labelstudio_options
from microal.cli.common import add_config, add_workdir, project_config, workspace
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
    from microal.cli.active import _label_studio
    from microal.labelstudio.config import image_label_config
    from microal.labelstudio.images import ImageLabelStudioLabeller

    return ImageLabelStudioLabeller(_label_studio(args, project, xml=image_label_config(project.config)))


def cmd_init(args) -> None:
    project = _project(args, create=True)
    counts = project.pool.counts()
    held_out = len(project.heldout_images())
    print(
        f"image pool {project.root}: {counts['labelled']} micrographs labelled (from the catalog), "
        f"{counts['unlabelled']} unlabelled; {held_out} held out for testing"
    )


def cmd_pull(args) -> None:
    from microal.cli.active import pull_and_report

    project = _project(args)
    pull_and_report(project, _labeller(args, project))


def cmd_run(args) -> None:
    from microal.cli.active import run_expert_loop

    project = _project(args)
    run_expert_loop(args, project, _labeller(args, project))


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
        add_labelstudio_options(step(name, help_text, handler), run=name == "run")
