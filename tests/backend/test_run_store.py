"""A pooled run's checkpoints in storage: complete ones only, pruned as Ray Train prunes them."""

import math

import pytest

from microal.backend.run_store import REPORT_FILE, RunStore


def _checkpoint(tmp_path, epoch: int):
    folder = tmp_path / f"local-{epoch}"
    folder.mkdir()
    (folder / "model.pt").write_bytes(bytes([epoch]) * 10)
    return folder


def test_the_best_by_score_and_the_latest_are_kept(tmp_path):
    store = RunStore(str(tmp_path / "storage"), "run", ("val_miou", "max"), keep=2)
    scores = [0.5, 0.7, float("nan"), 0.6, 0.4]
    for epoch, score in enumerate(scores, start=1):
        store.add(_checkpoint(tmp_path, epoch), {"epoch": epoch, "val_miou": score})
    kept = store.checkpoints()
    # 0.7 and 0.6 are the best two; epoch 5 (0.4) is the latest, kept for a restart.
    assert [c.metrics["epoch"] for c in kept] == [2, 4, 5]
    assert store.best().metrics["epoch"] == 2 and store.latest().metrics["epoch"] == 5


def test_a_half_written_checkpoint_is_never_restored_and_is_cleared_later(tmp_path):
    store = RunStore(str(tmp_path / "storage"), "run", ("loss", "min"), keep=1)
    store.add(_checkpoint(tmp_path, 1), {"epoch": 1, "loss": 2.0})
    # A worker lost while copying epoch 2: its folder has the files but no report.json.
    half = tmp_path / "storage" / "run" / "checkpoint_000002"
    half.mkdir()
    (half / "model.pt").write_bytes(b"partial")
    assert store.latest().metrics["epoch"] == 1
    with store.local_copy(store.latest()) as folder:
        assert (folder / "model.pt").read_bytes() == bytes([1]) * 10
    # The resumed attempt writes the next index; the half-written folder goes.
    store.add(_checkpoint(tmp_path, 3), {"epoch": 2, "loss": 1.0})
    assert not half.exists()
    assert [c.index for c in store.checkpoints()] == [3]
    assert (tmp_path / "storage" / "run" / "checkpoint_000003" / REPORT_FILE).exists()


def test_without_a_measured_score_the_latest_is_the_best(tmp_path):
    store = RunStore(str(tmp_path / "s"), "run", ("val_miou", "max"), keep=2)
    store.add(_checkpoint(tmp_path, 1), {"epoch": 1, "val_miou": float("nan")})
    store.add(_checkpoint(tmp_path, 2), {"epoch": 2, "val_miou": float("nan")})
    assert store.best().metrics["epoch"] == 2
    assert math.isnan(store.best().metrics["val_miou"])  # NaN survives JSON (stored as null)


def test_export_copies_the_named_files_with_a_prefix(tmp_path):
    store = RunStore(str(tmp_path / "s"), "run", ("val_miou", "max"), keep=2)
    store.add(_checkpoint(tmp_path, 1), {"epoch": 1, "val_miou": 0.3})
    out = tmp_path / "out"
    out.mkdir()
    store.export(store.best(), ("model.pt",), out, "best")
    assert (out / "best_model.pt").read_bytes() == bytes([1]) * 10
    with pytest.raises(FileNotFoundError):
        store.export(store.best(), ("missing.pt",), out, "best")
