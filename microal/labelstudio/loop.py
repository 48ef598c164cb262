"""Active learning with experts in Label Studio: push a round's selection as tasks with the
ensemble's pre-annotation, pull finished annotations back into the label store, and keep
the loop going by itself (`microal al run`).

Everything the loop knows is on disk (pool, label store, annotations.parquet, rounds/), and
Label Studio is asked what it already has before anything is created, so killing and
restarting the loop, or restarting Label Studio, loses no annotation and creates no duplicate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from microal.active import rounds
from microal.active.acquisition import score_scale
from microal.active.ensemble import Ensemble
from microal.active.pool import LABELLED, QUEUED, UNLABELLED
from microal.active.rounds import ALProject, RoundProject
from microal.active.scoring import TileScorer
from microal.files import atomic_path
from microal.labelstudio.annotations import agreement, consolidate
from microal.labelstudio.client import LabelStudioClient, mask_to_results, results_flags, results_to_mask
from microal.labelstudio.config import FLAG_UNSURE, REJECTING_FLAGS, label_config


@dataclass
class LabelStudioTarget:
    """The Label Studio project of an active-learning project, and where its tile images go."""

    client: LabelStudioClient
    project_id: int
    files_dir: Path
    files_root: Path

    def image_url(self, tile_id: str) -> str:
        relative = (self.files_dir / f"{tile_id}.png").relative_to(self.files_root)
        return f"/data/local-files/?d={relative.as_posix()}"


def connect(
    project: RoundProject, client: LabelStudioClient, workdir: Path, xml: str | None = None
) -> LabelStudioTarget:
    """The project's Label Studio project (created with the labelling config `xml`, by default the
    brush config of the class table), its overlap, and Local Files storage for its images."""
    settings = project.config.labelstudio
    files_root = Path(settings.files_root or workdir).resolve()
    files_dir = project.folders.ls_files.resolve()
    if files_root not in files_dir.parents:
        raise ValueError(f"labelstudio.files_root {files_root} must contain the folder of task images {files_dir}")
    files_dir.mkdir(parents=True, exist_ok=True)
    title = settings.project_title or f"microal {project.root.name}"
    project_id = client.ensure_project(title, xml or label_config(project.config))
    client.set_overlap(project_id, settings.annotators_per_tile)
    client.ensure_local_storage(project_id, str(files_dir))
    return LabelStudioTarget(client, project_id, files_dir, files_root)


def _write_tile_png(project: ALProject, tile: pd.Series, path: Path) -> None:
    """The tile centre the expert labels, as 8-bit grey (what the network sees, un-standardised)."""
    grid = project.tileset.grid(tile.image_id)
    array = project.tileset.image_array(tile.image_id)
    centre = np.clip(np.array(array[grid.centre_slices(int(tile.y), int(tile.x))]), 0, 1)
    with atomic_path(path) as tmp:
        Image.fromarray((centre * 255).round().astype(np.uint8)).save(tmp, format="PNG")


@dataclass
class PushReport:
    created: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)  # found in Label Studio, recorded in the pool


def new_selection(project: RoundProject, target: LabelStudioTarget, selection: pd.DataFrame, report: PushReport):
    """The selected items still to be queued. Tasks Label Studio has but the pool does not know
    of (a crash between the two) are recorded as queued first, in `report.already_there`."""
    pool = project.pool
    round_ = project.current_round + 1
    existing = target.client.tasks_by_tile(target.project_id)
    states = pool.table.set_index("tile_id").state
    orphans = [t for t in existing if t in states.index and states[t] == UNLABELLED]
    if orphans:
        pool.mark_queued(orphans, round_, task_ids=[existing[t] for t in orphans])
        report.already_there = orphans
    states = pool.table.set_index("tile_id").state
    return selection[selection.tile_id.map(lambda t: t not in existing and states.get(t) == UNLABELLED)]


def push(project: ALProject, target: LabelStudioTarget, selection: pd.DataFrame, ensemble: Ensemble) -> PushReport:
    """Queue the selected tiles as tasks with the ensemble's mask as a pre-annotation and the
    acquisition score as the prediction score. Idempotent: a tile is never queued twice."""
    report = PushReport()
    pool = project.pool
    round_ = project.current_round + 1
    new = new_selection(project, target, selection, report)
    if new.empty:
        return report
    tiles = project.tiles(new.tile_id)
    for _, tile in tiles.iterrows():
        _write_tile_png(project, tile, target.files_dir / f"{tile.tile_id}.png")
    masks = np.concatenate(
        ensemble.map_tiles(
            project.tiles_root, new.tile_id.tolist(), TileScorer.ensemble_masks, project.config, actors=1
        )
    )
    names = project.config.class_names
    # Label Studio shows prediction scores as percentages: the acquisition score on its own
    # [0, 1] scale (entropy and BALD over log C), so experts can sort by it.
    scale = score_scale(str(new.acquisition.iloc[0]), len(names)) if "acquisition" in new else 1.0
    tasks = []
    for (_, row), mask in zip(new.iterrows(), masks):
        tile = tiles.loc[row.tile_id]
        tasks.append(
            {
                "data": {
                    "image": target.image_url(row.tile_id),
                    "tile_id": row.tile_id,
                    "image_id": tile.image_id,
                    "domain": str(tile.domain),
                    "round": round_,
                    "acquisition_score": float(row.score),
                },
                "predictions": [
                    {
                        "result": mask_to_results(mask, names),
                        "score": min(1.0, float(row.score) / scale),
                        "model_version": ensemble.version,
                    }
                ],
            }
        )
    task_ids = target.client.create_tasks(target.project_id, tasks)
    pool.mark_queued(new.tile_id.tolist(), round_, task_ids=task_ids)
    report.created = new.tile_id.tolist()
    return report


@dataclass
class PullReport:
    labelled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # labelled before, annotation changed since
    rejected: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # fewer annotators than required so far


def _annotations_table(project: ALProject) -> pd.DataFrame:
    path = project.folders.annotations
    return (
        pd.read_parquet(path)
        if path.exists()
        else pd.DataFrame(
            columns=[
                "annotation_id",
                "task_id",
                "tile_id",
                "annotator",
                "lead_time",
                "was_cancelled",
                "updated_at",
                "flags",
                "round",
            ]
        )
    )


@dataclass
class Verdict:
    """What a pool item's submitted annotations came to: how many experts, how far they agreed,
    and a reason when they cannot be used (the item is then rejected)."""

    annotators: int
    agreement: float
    rejected: str | None = None


def accept_masks(project: ALProject, tile_id: str, submitted: list) -> Verdict:
    """The experts' masks of a tile, consolidated (majority vote) into the label store."""
    names = project.config.class_names
    size = project.tileset.tiling.tile_size
    masks = [results_to_mask(r.result, names, (size, size)) for r in submitted]
    tile = project.tileset.tiles.set_index("tile_id", drop=False).loc[tile_id]
    project.labels.write(tile, consolidate(masks, len(names)))
    return Verdict(len(masks), agreement(masks, len(names)))


def pull(project: RoundProject, target: LabelStudioTarget, accept=accept_masks) -> PullReport:
    """Bring finished annotations back: `accept` turns an item's submitted annotations into
    labels (by default a tile's consolidated mask), flagged or skipped items are recorded as
    rejected, every annotation's lead time is kept."""
    report = PullReport()
    pool = project.pool
    table = pool.table.set_index("tile_id")
    records = [r for r in target.client.annotations(target.project_id) if r.tile_id in table.index]
    known = _annotations_table(project)
    seen = set(zip(known.annotation_id.astype(int), known.updated_at.astype(str)))
    by_tile: dict[str, list] = {}
    for record in records:
        by_tile.setdefault(record.tile_id, []).append(record)
    needed = project.config.labelstudio.annotators_per_tile
    rows = []
    for tile_id, tile_records in sorted(by_tile.items()):
        round_ = int(table.loc[tile_id, "round"])
        for r in tile_records:
            rows.append(
                {
                    "annotation_id": r.annotation_id,
                    "task_id": r.task_id,
                    "tile_id": tile_id,
                    "annotator": r.annotator,
                    "lead_time": r.lead_time,
                    "was_cancelled": r.was_cancelled,
                    "updated_at": r.updated_at,
                    "flags": ",".join(results_flags(r.result)),
                    "round": round_,
                }
            )
        if all((r.annotation_id, r.updated_at) in seen for r in tile_records) and table.loc[tile_id, "state"] != QUEUED:
            continue  # nothing new for this tile
        submitted = [r for r in tile_records if not r.was_cancelled]
        flags = sorted({f for r in submitted for f in results_flags(r.result)})
        if not submitted:
            pool.mark_rejected([tile_id], round_, note="skipped")
            report.rejected.append(tile_id)
            continue
        if REJECTING_FLAGS & set(flags):
            pool.mark_rejected([tile_id], round_, note=",".join(flags))
            report.rejected.append(tile_id)
            continue
        if len(submitted) < needed:
            report.waiting.append(tile_id)
            continue
        verdict = accept(project, tile_id, submitted)
        if verdict.rejected:
            pool.mark_rejected([tile_id], round_, note=verdict.rejected)
            report.rejected.append(tile_id)
            continue
        was_labelled = table.loc[tile_id, "state"] == LABELLED
        note = f"annotators={verdict.annotators}; agreement={verdict.agreement:.3f}"
        note += "; unsure" if FLAG_UNSURE in flags else ""
        pool.mark_labelled([tile_id], round_, note=note, annotators=verdict.annotators, agreement=verdict.agreement)
        (report.updated if was_labelled else report.labelled).append(tile_id)
    if rows:
        project.costs.record(
            [
                {
                    "tile_id": row["tile_id"],
                    "annotator": str(row["annotator"]),
                    "round": row["round"],
                    "seconds": float(row["lead_time"] or 0.0),
                    "source": "label studio",
                }
                for row in rows
                if not row["was_cancelled"]
            ]
        )
        # Keep annotations Label Studio no longer lists (a reset server must not erase the record).
        merged = pd.concat([known, pd.DataFrame(rows)], ignore_index=True)
        merged = merged.drop_duplicates("annotation_id", keep="last")
        with atomic_path(project.folders.annotations) as tmp:
            merged.to_parquet(tmp, index=False)
    return report


def label_cost(project: ALProject) -> pd.DataFrame:
    """Expert time per round (from Label Studio's lead_time) and agreement where tiles had several experts."""
    table = _annotations_table(project)
    if table.empty:
        return pd.DataFrame(columns=["round", "annotations", "tiles", "hours", "mean_seconds_per_tile"])
    table["lead_time"] = pd.to_numeric(table.lead_time, errors="coerce").fillna(0.0)
    cost = (
        table.groupby("round")
        .agg(annotations=("annotation_id", "size"), tiles=("tile_id", "nunique"), seconds=("lead_time", "sum"))
        .reset_index()
    )
    cost["hours"] = cost.seconds / 3600
    cost["mean_seconds_per_tile"] = cost.seconds / cost.tiles
    pool = project.pool.table
    several = pool[pool.annotators.fillna(0) > 1]
    if not several.empty:
        cost = cost.merge(several.groupby("round").agreement.mean().rename("mean_agreement"), on="round", how="left")
    return cost.drop(columns="seconds")


class WebhookListener:
    """Answers Label Studio's webhook at once (it waits only 1 s) and wakes the loop up."""

    def __init__(self, port: int):
        self.event = threading.Event()
        event = self.event

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")
                event.set()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, seconds: float) -> bool:
        woke = self.event.wait(seconds)
        self.event.clear()
        return woke

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class LabelStudioLabeller:
    """The experts, as a labeller of the shared round (active/rounds.run_round): the batch is
    queued in Label Studio with pre-annotations; their masks come back through `pull`."""

    target: LabelStudioTarget
    name: str = "label studio"
    last_push: PushReport = field(default_factory=PushReport)

    def push(self, project: ALProject, selection: pd.DataFrame, ensemble: Ensemble) -> PushReport:
        return push(project, self.target, selection, ensemble)

    def pull(self, project: ALProject) -> PullReport:
        return pull(project, self.target)

    def hand_over(self, project: RoundProject, selection: pd.DataFrame, model) -> list[str]:
        self.last_push = self.push(project, selection, model)
        return self.last_push.created + self.last_push.already_there


def run_round(
    project: RoundProject,
    target: LabelStudioTarget,
    address: str | None = None,
    pull_seconds: float | None = None,
    labeller: LabelStudioLabeller | None = None,
) -> tuple[int, PushReport]:
    """The shared round with the experts as labeller (`labeller`, by default the tiles' one):
    train on everything labelled, score, select, push (`pull_seconds`: the pull that started
    it, for the round's timings)."""
    labeller = labeller or LabelStudioLabeller(target)
    before = {} if pull_seconds is None else {"pull": pull_seconds}
    outcome = rounds.run_round(project, labeller, address=address, seconds=before)
    if outcome.report is not None and "miou" in outcome.report:
        print(
            f"round {outcome.round}: held-out mIoU ensemble {outcome.heldout_miou:.4f}, members "
            f"{', '.join(f'{v:.4f}' for v in outcome.report.miou.iloc[1:])}",
            flush=True,
        )
    elif outcome.report is not None:
        print(
            f"round {outcome.round}: held-out accuracy {outcome.heldout('accuracy'):.3f}, "
            f"balanced accuracy {outcome.heldout('balanced_accuracy'):.3f}",
            flush=True,
        )
    if outcome.selection is None:
        return outcome.round, PushReport()
    pushed = labeller.last_push
    print(
        f"round {outcome.round}: queued {len(pushed.created)} {project.items} in Label Studio "
        f"({len(pushed.already_there)} found there already); "
        + ", ".join(f"{k} {v:.1f} s" for k, v in outcome.seconds.items() if k != "fits"),
        flush=True,
    )
    return outcome.round, pushed


def run_loop(
    project: RoundProject,
    target: LabelStudioTarget,
    until_round: int | None = None,
    address: str | None = None,
    stop: threading.Event | None = None,
    listener: WebhookListener | None = None,
    labeller: LabelStudioLabeller | None = None,
) -> None:
    """Pull, and when at least labelstudio.min_new_annotations tiles got labels since the last
    training (or every queued tile is done), retrain, rescore and push the next batch.
    Stops after the ensemble of `until_round` is trained (and its batch pushed). `labeller`:
    the Label Studio labeller of the project's items (default: tiles)."""
    settings = project.config.labelstudio
    labeller = labeller or LabelStudioLabeller(target)
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.perf_counter()
        pulled = labeller.pull(project)
        pull_seconds = time.perf_counter() - started
        if pulled.labelled or pulled.rejected or pulled.updated:
            print(
                f"pulled: {len(pulled.labelled)} labelled, {len(pulled.updated)} updated, "
                f"{len(pulled.rejected)} rejected, {len(pulled.waiting)} waiting for more annotators",
                flush=True,
            )
        done = project.trained_rounds()
        table = project.pool.table
        last = done[-1] if done else None
        new = int(((table.state == LABELLED) & (table["round"] > (last if last is not None else -1))).sum())
        queued = int((table.state == QUEUED).sum())
        if last is None or new >= settings.min_new_annotations or (queued == 0 and new > 0):
            round_, _ = run_round(project, target, address, pull_seconds=pull_seconds, labeller=labeller)
            if until_round is not None and round_ >= until_round:
                break
            continue
        if until_round is not None and last is not None and last >= until_round:
            break
        if queued == 0 and not (table.state == UNLABELLED).any():
            print(f"the pool is exhausted: every one of its {project.items} is labelled or rejected", flush=True)
            break
        if listener is not None:
            listener.wait(settings.poll_seconds)
        else:
            stop.wait(settings.poll_seconds)
