"""The `microal` command: a table of subcommands, each a small function in its group's module.

Every command works inside a work folder (``--workdir``, default ``microal-work``; its layout:
microal.workspace): catalog.parquet, tiles/, runs/<name>/, predictions/<name>/, evaluation/<name>/,
tune/<name>/, al/<name>/.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from microal import console
from microal.cli import active, classify, data, inference, labelstudio, planning, reporting, training, weights
from microal.cli.common import add_verbose, add_workdir
from microal.errors import MicroalError
from microal.workspace import Workspace

LOG_FILE = "microal.log"


def cmd_demo(args) -> None:
    from microal.demo import run_demo

    run_demo(args.out, epochs=args.epochs)


def add_demo(p) -> None:
    add_verbose(p)
    p.add_argument("--out", help="folder for everything the demo makes (default microal-demo-<time>)")
    p.add_argument("--epochs", type=int, help="override the training epochs (default from the synthetic config)")


# Commands that work inside a work folder get --workdir (the al and labelstudio steps add their own).
IN_WORKDIR = {
    "ingest",
    "plan",
    "tile",
    "train",
    "adapt",
    "pretrain",
    "tune",
    "predict",
    "evaluate",
    "compare",
    "report",
    "saliency",
}

COMMANDS: dict[str, tuple[str, Callable, Callable | None]] = {
    "synth": ("generate a synthetic two-domain micrograph set with exact masks", data.add_synth, data.cmd_synth),
    "ingest": ("register micrographs, masks and metadata in the catalog", data.add_ingest, data.cmd_ingest),
    "plan": (
        "derive the training plan (scale, tiles, batch, loss, schedule) from the data's fingerprint",
        planning.add_plan,
        planning.cmd_plan,
    ),
    "tile": ("resample to one physical scale and cut overlapping tiles", data.add_tile, data.cmd_tile),
    "train": ("supervised training as a Ray Train job", training.add_train, training.cmd_train),
    "adapt": (
        "unsupervised domain adaptation (AdaptSegNet, ADVENT) as a Ray Train job",
        training.add_adapt,
        training.cmd_adapt,
    ),
    "pretrain": (
        "encoder pre-training (classification head or SimCLR) as a Ray Train job",
        training.add_pretrain,
        training.cmd_pretrain,
    ),
    "tune": (
        "hyperparameter search: Ray Tune + Optuna TPE + ASHA, each trial a Ray Train job",
        training.add_tune,
        training.cmd_tune,
    ),
    "predict": (
        "full-size masks and phase fractions from a trained model",
        inference.add_predict,
        inference.cmd_predict,
    ),
    "evaluate": (
        "mIoU, per-class IoU, phase-fraction error, RDT, overlays",
        inference.add_evaluate,
        inference.cmd_evaluate,
    ),
    "saliency": (
        "Grad-CAM of a segmentation model: where the encoder sees each class, as PNG overlays",
        inference.add_saliency,
        inference.cmd_saliency,
    ),
    "report": (
        "one self-contained HTML report of a run or an active-learning project",
        reporting.add_report,
        reporting.cmd_report,
    ),
    "classify": (
        "whole micrographs by class, with 'none of these': train, predict, evaluate",
        classify.add_classify,
        None,
    ),
    "al": ("active learning: init, ensemble, score, select, push, pull, run, simulate", active.add_al, None),
    "labelstudio": ("a local Label Studio server, and the labelling config", labelstudio.add_labelstudio, None),
    "compare": (
        "score several runs on the same images: table and overlays side by side",
        inference.add_compare,
        inference.cmd_compare,
    ),
    "weights": ("pretrained encoder weights (ImageNet, MicroNet): download, import, list", weights.add_weights, None),
    "demo": ("synth -> ingest -> tile -> train -> predict -> evaluate on generated data", add_demo, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microal",
        description="From steel micrographs to trained segmentation models with the fewest expert hours.",
        epilog="Run `microal COMMAND --help` for a command's options; `microal demo` shows the whole pipeline.",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show Ray's own log lines too (they always go to the log file)"
    )
    workdir = argparse.ArgumentParser(add_help=False)
    add_workdir(workdir)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments, handler) in COMMANDS.items():
        parents = [workdir] if name in IN_WORKDIR else []
        p = sub.add_parser(name, help=summary, description=summary, parents=parents)
        add_arguments(p)
        if handler is not None:  # groups (al, labelstudio) set their steps' handlers
            p.set_defaults(handler=handler)
    return parser


def log_file_for(args) -> Path | None:
    """Where a command's log goes: its run's, search's or project's folder, else the work folder."""
    if not hasattr(args, "workdir"):
        return None
    ws = Workspace.at(args.workdir)
    name = getattr(args, "name", None)
    if args.command in ("train", "adapt", "pretrain") and name:
        return ws.run(name) / LOG_FILE
    if args.command == "tune" and name:
        return ws.tune(name) / LOG_FILE
    if args.command == "classify" and name and getattr(args, "classify_command", None) == "train":
        return ws.run(name) / LOG_FILE
    if args.command == "al" and name:
        return ws.al(name) / LOG_FILE
    return ws.root / LOG_FILE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure(verbose=getattr(args, "verbose", False), log_file=log_file_for(args))
    try:
        args.handler(args)
    except MicroalError as error:
        print(f"microal {args.command}: error: {error}", file=sys.stderr)
        _point_to_log()
        return 2
    except KeyboardInterrupt:
        print(f"microal {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a failure inside a library: its cause here, its stack in the log
        if console.verbose():
            raise
        console.log_lines(traceback.format_exc().splitlines())
        print(f"microal {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        _point_to_log()
        return 1
    return 0


def run() -> None:
    """The `microal` program: main(), then an exit without the interpreter's teardown."""
    exit_without_teardown(main())


def exit_without_teardown(code: int) -> None:
    """Leave as a normal exit would, minus freeing every module one by one: with torch loaded that
    takes 1-3 s after a command has finished (measured: `microal demo` ended 2.9 s after Ray's
    shutdown). What a command relies on still runs first: other threads are waited for, the
    atexit handlers run (Ray's shutdown, log files flushed), and the terminal streams are flushed."""
    threading._shutdown()  # what the interpreter does first on exit: join non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def _point_to_log() -> None:
    path = console.log_file()
    if path is not None and path.exists():
        print(f"  the full log: {path} (or run again with --verbose)", file=sys.stderr)


if __name__ == "__main__":
    run()
