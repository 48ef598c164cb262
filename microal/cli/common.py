"""What the command groups share: the work folder, the project config and the common options."""

from __future__ import annotations

import argparse

from microal.config import ProjectConfig, load_config
from microal.workspace import Workspace

DEFAULT_WORKDIR = "microal-work"


def workspace(args) -> Workspace:
    return Workspace.at(args.workdir)


def project_config(args) -> ProjectConfig:
    return load_config(args.config)


def add_workdir(p) -> None:
    p.add_argument("--workdir", "-w", default=DEFAULT_WORKDIR, help=f"work folder (default {DEFAULT_WORKDIR})")
    add_verbose(p)


def add_verbose(p) -> None:
    # SUPPRESS: a subcommand's absent flag must not reset `microal --verbose COMMAND`.
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Ray's own log lines on the terminal too (they always go to the log file)",
    )


def add_config(p, required: bool = True) -> None:
    p.add_argument(
        "--config", "-c", required=required, help="project YAML (classes, ingest, tiling, split, model, training)"
    )


def add_address(p) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")


def add_storage_path(p, what: str) -> None:
    p.add_argument(
        "--storage-path", help=f"where Ray keeps {what} (default <workdir>/ray_results; s3://... on a cluster)"
    )


def storage_path(args, ws: Workspace) -> str:
    return args.storage_path or str(ws.ray_storage)
