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
