"""`microal plan`: the training plan for a config's `auto` settings, with a reason per choice."""

from __future__ import annotations

from microal.cli.common import add_config, project_config, workspace


def cmd_plan(args) -> None:
    from microal.config import PLANNABLE, apply_overrides
    from microal.data.catalog import read_catalog
    from microal.planning.fingerprint import fingerprint
    from microal.planning.plan import apply_plan, make_plan, write_plan

    ws = workspace(args)
    config = project_config(args)
    if args.all:  # what the plan would choose for every setting it can plan (epochs only with a budget)
        keys = set(PLANNABLE) - ({"training.epochs"} if config.training.budget is None else set())
        config = apply_overrides(config, {"auto": sorted(set(config.auto) | keys)}, source="--all")
    if not config.auto:
        print("nothing is `auto` in the config (write `auto: all`, or e.g. `tile_size: auto`; or pass --all):")
    plan = make_plan(config, fingerprint(read_catalog(ws.catalog), config))
    print(f"training plan for {args.config} ({len(plan.overrides())} settings planned):\n{plan.table()}")
    path = write_plan(plan, apply_plan(config, plan), ws.root)
    print(f"written: {path} (its `config:` section is the planned config; `microal tile` and `train` plan the same)")


def add_plan(p) -> None:
    add_config(p)
    p.add_argument("--all", action="store_true", help="plan every plannable setting, also those the config sets")
