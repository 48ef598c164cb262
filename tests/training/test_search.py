"""`microal tune` on a local Ray: a small real search, and a search stopped with Ctrl-C and resumed."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import attach_to_ray_local, checkpoint_dirs, quick_config_dict

from microal.active.ensemble import ensemble_from_search
from microal.config import load_config, parse_config
from microal.models.model_file import read_metrics
from microal.training.search import tune
from microal.training.search_space import SearchSpace

SPACE = {
    "job": "supervised",
    "metric": "val_miou",
    "mode": "max",
    "params": {
        "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "training.augmentation": {"type": "categorical", "choices": ["basic", "none"]},
    },
}


def test_search_writes_results_best_config_and_curves(ray_local, tiled, synth_dir):
    ws, _, _ = tiled
    config = parse_config(quick_config_dict(synth_dir, epochs=2))
    space = SearchSpace.model_validate(SPACE)
    # Two trials at a time (one CPU each): the concurrent path, and half the start-up waits.
    summary = tune(
        config,
        space,
        ws.tiles,
        ws.root / "tune" / "s",
        str(ws.ray_storage),
        "s",
        trials=3,
        grace_period=1,
        concurrency=2,
    )

    results = pd.read_csv(summary.out_dir / "results.csv")
    assert len(results) == 3 and results.trial_id.is_unique
    assert set(results.status) <= {"finished", "stopped early"} and (results.status == "finished").any()
    assert results.epochs.between(1, 2).all()
    assert results.best_val_miou.iloc[0] == results.best_val_miou.max()
    # The best config is a whole project config that `microal train` accepts unchanged.
    best = load_config(summary.out_dir / "best_config.yaml")
    assert best.training.lr == pytest.approx(results["training.lr"].iloc[0])
    assert best.training.augmentation == results["training.augmentation"].iloc[0]
    assert best.training.epochs == 2 and best.class_names == config.class_names
    assert (summary.out_dir / "trials.png").stat().st_size > 10_000
    # Each trial is its own Ray Train run with checkpoints under a stable name.
    for trial_id in results.trial_id:
        assert checkpoint_dirs(ws.ray_storage / f"s-{trial_id}")
    # The best trials make an ensemble: each member is its trial's best checkpoint.
    ensemble = ensemble_from_search(ws.ray_storage, summary.out_dir, 2, "val_miou", "max")
    assert len(ensemble.members) == 2
    for member, (_, row) in zip(ensemble.members, results.head(2).iterrows()):
        assert f"s-{row.trial_id}" in str(member)
        metrics = read_metrics(member)
        assert metrics["val_miou"] == pytest.approx(row.best_val_miou)


def _reported_epochs(experiment: Path) -> dict[str, int]:
    """Trial id -> epochs its run has reported to Tune so far."""
    reported = {}
    for result in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines:
            reported[lines[-1]["trial_id"]] = len(lines)
    return reported


def _finished_trials(experiment: Path, epochs: int) -> dict[str, list[str]]:
    """Trial id -> checkpoint folders, for trials whose run reported every epoch."""
    return {
        trial_id: [p.name for p in checkpoint_dirs(experiment.parent / f"{experiment.name}-{trial_id}")]
        for trial_id, count in _reported_epochs(experiment).items()
        if count >= epochs
    }


class _OutputReader:
    """Collects a process's output on a thread, so the test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen):
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def text(self) -> str:
        """All the output, once the process has exited (waits up to 10 s for the reader to reach its end)."""
        self._reader.join(timeout=10)
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, condition, timeout_s: float) -> bool:
        """True once condition(output so far) holds; False if the output ends or the deadline passes first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition("".join(self._lines)):
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    return False
                self._changed.wait(left)
            return True


def test_interrupted_search_resumes_without_rerunning_finished_trials(ray_local, tiled, synth_dir, tmp_path):
    ws, _, _ = tiled
    config = tmp_path / "c.yaml"
    # Interrupted once the first trial has finished and the second (in the same trial process,
    # reused) has reported its first of three epochs.
    epochs = 3
    config.write_text(yaml.safe_dump(quick_config_dict(synth_dir, epochs=epochs, samples_per_epoch=32)))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    work = tmp_path / "w"
    work.mkdir()
    (work / "tiles").symlink_to(ws.tiles)  # the tile set the session fixture built
    base = [sys.executable, "-m", "microal.cli"]
    command = base + [
        "tune",
        "-c",
        str(config),
        "--space",
        str(space),
        "--trials",
        "2",
        "--name",
        "s",
        "--scheduler",
        "fifo",
        "-w",
        str(work),
        *attach_to_ray_local(),
    ]
    experiment = work / "ray_results" / "s"

    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Tune writes a trial's results to disk in batches, so the progress lines say when: the second
    # trial's first epoch.
    lines = _OutputReader(first)
    seen_second_trial = lines.wait_for(lambda text: text.count(f"epoch 1/{epochs} ") >= 2, timeout_s=300)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    first.wait(timeout=120)
    output = lines.text()
    assert seen_second_trial, "the second trial never reported its first epoch:\n" + output[-3000:]
    finished_before = _finished_trials(experiment, epochs)
    assert finished_before, output[-3000:]
    assert len(finished_before) < 2, "the search finished before it could be interrupted"

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    results = pd.read_csv(work / "tune" / "s" / "results.csv")
    assert len(results) == 2 and set(results.status) == {"finished"}, results.to_string() + resumed.stdout[-3000:]
    # The interrupted trial went on from its checkpoint instead of starting over.
    assert re.search(rf"resumed from the checkpoint after epoch [1-{epochs - 1}]\b", resumed.stdout), resumed.stdout
    finished_after = _finished_trials(experiment, epochs)
    for trial_id, checkpoints in finished_before.items():
        # Not re-run: the same checkpoints, no new ones.
        assert finished_after[trial_id] == checkpoints
