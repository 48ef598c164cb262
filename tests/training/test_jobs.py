"""Supervised training as a real Ray Train job on a local Ray cluster (one worker and DDP)."""

import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
from conftest import REPO, checkpoint_dirs, quick_config_dict, uda_config_dict
from ray.util.state import list_actors

from microal.config import ProjectConfig, parse_config
from microal.data.splits import TRAIN, VAL
from microal.errors import ConfigError, MicroalError
from microal.training.jobs import JOB_KINDS, adapt, build_job, train
from microal.training.payloads import AdaptationData, PretrainData, SupervisedData


def _config(synth_dir, **training):
    return parse_config(quick_config_dict(synth_dir, **training))


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_one_worker_trains_checkpoints_and_exports_then_resumes(ray_local, tiled, synth_dir):
    ws, catalog, _ = tiled
    config = _config(synth_dir, epochs=2, lr=0.005)
    summary = train(config, ws.tiles, ws.run("one"), str(ws.ray_storage), "one")

    history = summary.history
    assert history.epoch.tolist() == [1, 2]
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    assert history.val_miou.notna().all() and history.val_miou.between(0, 1).all()
    assert {"val_iou_c0", "val_iou_c1", "val_iou_c2"} <= set(history.columns)

    best = _load(summary.best_model)
    assert best["metrics"]["val_miou"] == pytest.approx(history.val_miou.max())
    first = _load(ws.run("one") / "last_model.pt")
    assert first["epoch"] == 2
    assert (ws.run("one") / "learning_curve.png").stat().st_size > 10_000
    assert 1 <= len(checkpoint_dirs(ws.ray_storage / "one")) <= 2

    splits = pd.read_csv(ws.run("one") / "splits.csv")
    train_samples = set(splits[splits.split == TRAIN]["sample"])
    assert train_samples and not train_samples & set(splits[splits.split != TRAIN]["sample"])
    assert (splits.split == VAL).any()

    # The same run again is refused unless asked to resume; resumed, it continues from its checkpoint.
    longer = _config(synth_dir, epochs=3, lr=0.005)
    with pytest.raises(MicroalError, match="already exists.*--resume"):
        train(longer, ws.tiles, ws.run("one"), str(ws.ray_storage), "one")
    summary = train(longer, ws.tiles, ws.run("one"), str(ws.ray_storage), "one", resume=True)
    # Epochs 1-2 come from the checkpoint (identical records), only epoch 3 was trained now.
    assert summary.history.epoch.tolist() == [1, 2, 3]
    assert summary.history.iloc[:2].to_dict("records") == pd.DataFrame(first["history"]).to_dict("records")
    # One Ray checkpoint per epoch reported: the best two and the latest are kept.
    assert 1 <= len(checkpoint_dirs(ws.ray_storage / "one")) <= 3


def _alive_controllers() -> set[int]:
    filters = [("class_name", "=", "TrainController"), ("state", "=", "ALIVE")]
    return {a.pid for a in list_actors(address=ray.get_runtime_context().gcs_address, filters=filters)}


def test_a_ddp_adaptation_run_survives_its_controller_dying(ray_local, tiled, synth_dir, capfd):
    """An ADVENT job on two DDP workers through Ray Train, and the controller process killed
    mid-run (as a crash inside Ray does): the run goes on from its last checkpoint instead of
    failing. One Train run checks both the adaptation loop under DDP and the controller's loss,
    since each Train start costs 10-20 s here. (A one-worker run's lost worker:
    tests/backend/test_ray.py and test_fault_tolerance.py.)"""
    ws, _, _ = tiled
    config = parse_config(
        uda_config_dict(synth_dir, {"epochs": 3, "num_workers": 2}, method="advent", weight_entropy=0.01)
    )
    before = _alive_controllers()
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(summary=adapt(config, ws.tiles, ws.run("ctl"), str(ws.ray_storage), "ctl"))
    )
    thread.start()
    deadline = time.time() + 120
    while not (_alive_controllers() - before) and time.time() < deadline:
        time.sleep(0.2)
    controller = (_alive_controllers() - before).pop()
    while len(checkpoint_dirs(ws.ray_storage / "ctl")) < 2 and time.time() < deadline:
        time.sleep(0.1)
    # The controller passes the loop and its job on pickled: it never imports the loop's modules
    # (smp, timm and torchvision: seconds of CPU a run). torchvision maps its C extension on import.
    controller_libraries = Path(f"/proc/{controller}/maps").read_text()
    os.kill(controller, signal.SIGKILL)
    assert "torchvision" not in controller_libraries
    thread.join(timeout=300)

    history = outcome["summary"].history
    assert history.epoch.tolist() == [1, 2, 3], "epochs lost or repeated"
    attempts = history.attempt.tolist()
    assert attempts[0] == 0 and attempts[-1] == 1 and attempts == sorted(attempts), attempts
    assert 1 <= attempts.index(1) < 3  # resumed from a checkpoint, not from scratch
    assert "controller died" in capfd.readouterr().out
    # The entropy term trained on both ranks, and both contributed their shards of the validation
    # set: IoUs are finite.
    assert (history.train_entropy_loss > 0).all()
    assert history.val_miou.between(0, 1).all()
    state = _load(outcome["summary"].best_model)["state_dict"]
    assert state and not any(k.startswith("module.") for k in state)  # saved unwrapped


@pytest.mark.parametrize("kind", sorted(JOB_KINDS))
def test_every_job_kind_builds_a_typed_job_that_travels_as_it_is(kind, tiled, synth_dir):
    """The table decides the payload, loop, best-epoch metric, progress fields and files; the job
    (the validated config included) survives the pickling Ray does on its way to the workers."""
    ws, _, _ = tiled
    data = quick_config_dict(synth_dir)
    data["uda"] = {"target_domains": ["B"], "select_by": "target_entropy"}
    data["pretrain"] = {"method": "classification", "label_column": "sample", "epochs": 3}
    config = parse_config(data)
    built = build_job(kind, config, ws.tiles)
    payload_type = {"supervised": SupervisedData, "uda": AdaptationData, "pretrain": PretrainData}[kind]
    assert type(built.job.data) is payload_type and built.job.data.train_images
    assert built.job.progress == JOB_KINDS[kind].progress and built.job.config == config
    assert (
        built.selection
        == {"supervised": ("val_miou", "max"), "uda": ("target_entropy", "min"), "pretrain": ("val_accuracy", "max")}[
            kind
        ]
    )
    assert built.kind.epochs(config) == (3 if kind == "pretrain" else config.training.epochs)
    again = pickle.loads(pickle.dumps(built.job))
    assert again == built.job and isinstance(again.config, ProjectConfig)
    if kind == "uda":
        target = set(built.splits.image_id[built.splits.split == "target"])
        assert target and set(built.job.data.target_images) == target
        assert not target & set(built.job.data.train_images)  # target images never train with their masks


def test_an_unknown_job_kind_names_the_valid_ones(tiled, synth_dir):
    ws, _, _ = tiled
    with pytest.raises(ConfigError, match=r"unknown job kind 'segment'; valid: \['pretrain', 'supervised', 'uda'\]"):
        build_job("segment", parse_config(quick_config_dict(synth_dir)), ws.tiles)


def test_budgets_and_plans_are_for_supervised_training_only(tiled, tmp_path):
    from microal.config import apply_overrides
    from microal.training.jobs import run, tiles_job
    from microal.training.payloads import LabelledTiles
    from microal.training.search import tune
    from microal.training.search_space import load_space

    ws, _, config = tiled
    for settings in ({"training.budget": "5min"}, {"auto": ["training.batch_size"]}):
        fixed_only = apply_overrides(config, settings)
        with pytest.raises(ConfigError, match="are planned for microal train; give adaptation fixed settings"):
            run("uda", fixed_only, ws.tiles, tmp_path / "run", str(tmp_path / "ray"), "uda")
        with pytest.raises(ConfigError, match="active learning needs fixed settings"):
            tiles_job(fixed_only, ws.tiles, LabelledTiles(train_tiles=["t"]), images=[])
        space = load_space(REPO / "tune_spaces" / "supervised.yaml")
        with pytest.raises(ConfigError, match="a search runs fixed settings per trial"):
            tune(fixed_only, space, ws.tiles, tmp_path / "tune", str(tmp_path / "ray"), "search", trials=2)
    assert not (tmp_path / "run").exists() and not (tmp_path / "tune").exists()  # refused before writing
