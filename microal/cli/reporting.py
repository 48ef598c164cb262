"""`microal report`: one self-contained HTML file for a run or an active-learning project."""

from __future__ import annotations

from pathlib import Path

from microal.cli.common import workspace
from microal.errors import MicroalError


def cmd_report(args) -> None:
    ws = workspace(args)
    if args.al or args.project:
        from microal.report.project import project_report

        folder = Path(args.project) if args.project else ws.al(args.al)
        out = Path(args.out) if args.out else ws.report(f"al-{folder.name}")
        written = project_report(folder, out)
    elif args.name:
        from microal.report.run import run_report

        written = run_report(ws, args.name, args.out)
    else:
        raise MicroalError("say what to report on: --name RUN, --al NAME or --project FOLDER")
    print(f"report: {written} (open it in a browser; figures are embedded)")


def add_report(p) -> None:
    p.add_argument("--name", help="a training run (its predictions and evaluation of the same name are included)")
    p.add_argument("--al", help="an active-learning project or simulation in <workdir>/al/NAME")
    p.add_argument("--project", help="an active-learning project or simulation folder anywhere")
    p.add_argument("--out", help="the HTML file (default <workdir>/reports/NAME.html or al-NAME.html)")
