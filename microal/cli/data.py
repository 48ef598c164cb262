"""`microal synth`, `ingest`, `tile`: micrographs into the catalog and the tile set."""

from __future__ import annotations

from pathlib import Path

from microal.cli.common import add_config, project_config, workspace


def cmd_synth(args) -> None:
    from microal.data.synth import generate

    manifest = generate(args.out, n_per_domain=(args.n_a, args.n_b), seed=args.seed)
    print(f"wrote {args.n_a + args.n_b} images with masks: {manifest}")
    print(f"config: {Path(args.out) / 'microal.yaml'}")


def cmd_ingest(args) -> None:
    from microal.data.catalog import ingest

    ws = workspace(args)
    table, changed = ingest(args.path, project_config(args), ws.catalog)
    state = "written" if changed else "unchanged"
    print(f"catalog {state}: {ws.catalog} ({len(table)} images, {int(table.labelled.sum())} with masks)")
    print(table.groupby("domain").agg(images=("image_id", "size"), labelled=("labelled", "sum")).to_string())


def cmd_tile(args) -> None:
    from microal.data.catalog import read_catalog
    from microal.data.tiles import build_tiles
    from microal.planning.plan import resolve

    ws = workspace(args)
    catalog = read_catalog(ws.catalog)
    config = resolve(project_config(args), catalog, ws.root)  # settings left to `auto` are planned
    tileset = build_tiles(catalog, config, ws.tiles)
    print(
        f"tile set: {ws.tiles} ({len(tileset.images)} images, {len(tileset.tiles)} tiles of "
        f"{tileset.tiling.tile_size}+2x{tileset.tiling.margin} px)"
    )


def add_synth(p) -> None:
    p.add_argument("out", help="folder to write images/, masks/, manifest.csv and microal.yaml into")
    p.add_argument("--n-a", type=int, default=10, help="images of domain A (SEM-like)")
    p.add_argument("--n-b", type=int, default=4, help="images of domain B (light-optical-like)")
    p.add_argument("--seed", type=int, default=0)


def add_ingest(p) -> None:
    p.add_argument("path", help="a folder of micrographs or a CSV manifest")
    add_config(p)


def add_tile(p) -> None:
    add_config(p)
