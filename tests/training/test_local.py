"""The training loops in one process (LocalSession, no Ray): loader processes, mixed precision,
validation and checkpoints on their schedule, and an exact resume."""

import math

import pytest
import torch
from conftest import quick_config_dict

from microal.config import parse_config
from microal.data.tiles import load_tiles
from microal.training.jobs import build_job
from microal.training.local import LocalSession
from microal.training.loop import make_loader
from microal.training.supervised import train_worker, training_datasets


@pytest.fixture
def quick(tiled, synth_dir):
    """(workspace, config factory): the synthetic set's quick config with training overrides."""
    ws, _, _ = tiled

    def config(**training):
        return parse_config(quick_config_dict(synth_dir, **training))

    return ws, config


def _fit(ws, config, tmp_path, name, resume_from=None):
    job = build_job("supervised", config, ws.tiles).job
    session = LocalSession(cpus=2, checkpoint_root=tmp_path / name, resume_from=resume_from)
    (tmp_path / name).mkdir(exist_ok=True)
    train_worker(job, session)
    return session


def test_loader_processes_give_exactly_the_windows_of_the_main_process(quick):
    ws, config = quick
    tileset = load_tiles(ws.tiles)
    batches = {}
    for workers in (0, 2):
        cfg = config(loader_workers=workers, augmentation="extended")
        job = build_job("supervised", cfg, ws.tiles).job
        train_set, _ = training_datasets(job.data, cfg, tileset, rank=0)
        loader = make_loader(train_set, 4, LocalSession(cpus=2), cfg.training, seed=0)
        assert loader.num_workers == workers
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # the dataset in a loader process is never told
            epochs.append([(x.clone(), y.clone()) for x, y in loader])
        batches[workers] = epochs
    for main, parallel in zip(batches[0], batches[2]):
        assert len(main) == len(parallel) > 1
        for (x0, y0), (x2, y2) in zip(main, parallel):
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(batches[0][0][0][0], batches[0][1][0][0])  # a new epoch draws new windows


def test_validation_and_checkpoints_follow_their_schedule_and_resume_is_exact(quick, tmp_path):
    ws, config = quick
    cfg = config(epochs=5, validate_every=2, checkpoint_every=3, val_windows=6, precision="fp32")
    full = _fit(ws, cfg, tmp_path, "full")
    metrics = [m for m, _ in full.reports]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    validated = [m["epoch"] for m in metrics if not math.isnan(m["val_miou"])]
    assert validated == [2, 4, 5]  # every 2nd and the last
    assert all(m["val_seconds"] == 0.0 for m in metrics if m["epoch"] not in validated)
    # every 3rd, the last, and epoch 2 (the first validated epoch is a new best); 4 if it improved
    best_so_far, expected = -1.0, []
    for m in metrics:
        improved = not math.isnan(m["val_miou"]) and m["val_miou"] > best_so_far
        best_so_far = max(best_so_far, m["val_miou"]) if improved else best_so_far
        if improved or m["epoch"] % 3 == 0 or m["epoch"] == 5:
            expected.append(m["epoch"])
    assert full.checkpointed_epochs == expected and 2 in expected and 3 in expected

    # Resume from the checkpoint after epoch 3: epochs 4 and 5 are the same, to the last bit.
    resumed = _fit(ws, cfg, tmp_path, "resumed", resume_from=tmp_path / "full" / "checkpoint_0003")
    again = [m for m, _ in resumed.reports]
    assert [m["epoch"] for m in again] == [4, 5] and all(m["attempt"] == 1 for m in again)
    for original, repeated in zip(metrics[3:], again):
        for key in ("train_loss", "val_loss", "val_miou"):
            assert repeated[key] == original[key] or (math.isnan(repeated[key]) and math.isnan(original[key]))


def test_bf16_training_stays_within_seed_noise_of_fp32(quick, tmp_path):
    ws, config = quick

    def final_miou(precision, seed):
        cfg = config(
            epochs=6,
            validate_every=6,  # the last epoch's mIoU is the one compared
            samples_per_epoch=32,
            lr=0.003,
            encoder_lr_factor=1.0,
            precision=precision,
            seed=seed,
        )
        # A shallower U-Net: on a CPU without bf16 instructions (AVX2 only) bf16 is emulated and
        # the full depth costs a minute; the numerics under test are the same at any depth.
        cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(
                    update={"options": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}}
                )
            }
        )
        session = _fit(ws, cfg, tmp_path, f"{precision}-{seed}")
        return float(session.reports[-1][0]["val_miou"])

    fp32 = [final_miou("fp32", seed) for seed in (0, 1)]
    bf16 = final_miou("bf16", 0)
    assert min(fp32) > 0.4, f"the small fit did not learn: {fp32}"  # otherwise the comparison says nothing
    noise = abs(fp32[0] - fp32[1])
    assert abs(bf16 - fp32[0]) <= max(0.05, 2 * noise), f"bf16 {bf16:.3f} vs fp32 {fp32} (seed noise {noise:.3f})"
