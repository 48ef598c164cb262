"""What every training loop shares: the epoch line."""

from microal.training.jobs import JOB_KINDS
from microal.training.loop import progress_line

HISTORY = [{"epoch": 1, "epoch_seconds": 10.0}, {"epoch": 2, "epoch_seconds": 12.0}]


def test_progress_line():
    history = [{"epoch": 1, "epoch_seconds": 10.0}, {"epoch": 2, "epoch_seconds": 12.0}]
    line = progress_line(
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.4, "val_miou": 0.7, "epoch_seconds": 12.0},
        history,
        4,
        ("val_loss", "val_miou"),
    )
    assert line.startswith("epoch 2/4 [##########..........]")
    assert "val_mIoU 0.7000" in line and "~22 s left" in line


def test_each_job_kind_shows_its_own_fields_and_skips_what_was_not_measured():
    metrics = {
        "epoch": 1,
        "train_seg_loss": 0.5,
        "val_loss": 0.4,
        "val_miou": float("nan"),
        "target_miou": 0.61,
        "val_accuracy": 0.875,
        "epoch_seconds": 10.0,
    }
    uda = progress_line(metrics, HISTORY[:1], 2, JOB_KINDS["uda"].progress)
    assert "train_seg_loss 0.5000" in uda and "target_mIoU 0.6100" in uda
    assert "val_mIoU" not in uda and "val_accuracy" not in uda  # no validation set: no NaN in the line
    pretrain = progress_line(metrics, HISTORY[:1], 2, JOB_KINDS["pretrain"].progress)
    assert "val_accuracy 0.875 " in pretrain and "target_mIoU" not in pretrain


def test_epoch_line_shows_what_validation_costs():
    history = [
        {"epoch": 1, "epoch_seconds": 10.0, "val_seconds": 4.0},
        {"epoch": 2, "epoch_seconds": 6.0, "val_seconds": 0.0},  # not validated
    ]
    line = progress_line({"epoch": 2, "train_loss": 0.5, "epoch_seconds": 6.0}, history, 4, ("val_miou",))
    assert "8 s/epoch (validation 4.0 s)" in line


def test_epoch_sampler_shards_pads_and_reshuffles_each_epoch():
    from microal.training.loop import EpochSampler

    shards = [EpochSampler(10, rank, 3, seed=5) for rank in range(3)]
    drawn = [list(s) for s in shards]
    assert all(len(d) == 4 for d in drawn)  # 10 items padded to 12: DDP ranks step together
    assert {i for d in drawn for _, i in d} == set(range(10))
    assert all(epoch == 0 for d in drawn for epoch, _ in d)
    again = [list(EpochSampler(10, rank, 3, seed=5)) for rank in range(3)]
    assert again == drawn  # seeded: a resumed run draws the same
    shards[0].set_epoch(1)
    next_epoch = list(shards[0])
    assert next_epoch != drawn[0] and all(epoch == 1 for epoch, _ in next_epoch)


def test_epoch_plan_validates_and_checkpoints_as_configured_and_keeps_every_new_best():
    from microal.config import TrainingConfig
    from microal.training.loop import EpochPlan

    training = TrainingConfig(epochs=10, validate_every=2, checkpoint_every=4)
    plan = EpochPlan(training, 10, ("val_miou", "max"), [])
    assert [e for e in range(1, 11) if plan.validates(e)] == [2, 4, 6, 8, 10]
    nan = float("nan")
    scores = {1: nan, 2: 0.5, 3: nan, 4: 0.4, 5: nan, 6: 0.6, 7: nan, 8: 0.55, 9: nan, 10: 0.58}
    written = [e for e in range(1, 11) if plan.checkpoints({"epoch": e, "val_miou": scores[e]})]
    # new bests (2, 6), every 4th (4, 8) and the last (10)
    assert written == [2, 4, 6, 8, 10]
    # A resumed run knows the best so far from its history: 0.55 after epoch 8 is no new best.
    resumed = EpochPlan(training, 10, ("val_miou", "max"), [{"epoch": e, "val_miou": scores[e]} for e in range(1, 7)])
    assert resumed.best == 0.6
    assert not resumed.checkpoints({"epoch": 7, "val_miou": 0.55})
    loss_plan = EpochPlan(TrainingConfig(checkpoint_every=100), 10, ("train_loss", "min"), [])
    assert [loss_plan.checkpoints({"epoch": e, "train_loss": v}) for e, v in [(1, 1.0), (2, 1.2), (3, 0.9)]] == [
        True,
        False,
        True,
    ]


def test_validation_subset_is_fixed_and_seeded():
    import pandas as pd

    from microal.config import TrainingConfig
    from microal.training.loop import validation_subset

    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(50)]})
    assert len(validation_subset(tiles, TrainingConfig())) == 50  # default: all
    first = validation_subset(tiles, TrainingConfig(val_windows=12))
    assert (
        len(first) == 12
        and first.tile_id.tolist() == validation_subset(tiles, TrainingConfig(val_windows=12)).tile_id.tolist()
    )
    assert first.index.is_monotonic_increasing
    other_seed = validation_subset(tiles, TrainingConfig(val_windows=12, seed=1))
    assert other_seed.tile_id.tolist() != first.tile_id.tolist()
