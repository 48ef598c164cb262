"""A training worker lost mid-run is restarted from its last checkpoint (FailureConfig), on a
real two-node Ray cluster on loopback whose worker node is killed during training."""

import json
import subprocess
import sys

import yaml
from conftest import REPO, quick_config_dict


def test_killed_worker_node_resumes_from_checkpoint(synth_dir, tiled, tmp_path):
    ws, _, _ = tiled
    config = quick_config_dict(synth_dir, epochs=6, samples_per_epoch=48, max_failures=2)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "w"
    work.mkdir()
    (work / "tiles").symlink_to(ws.tiles)  # the tile set the session fixture built
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "helpers" / "fault_tolerance_run.py"), str(path), str(work)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] is None, report["error"]
    assert report["checkpoints_at_kill"] >= 3

    history = report["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6], "epoch count not intact"
    attempts = [row["attempt"] for row in history]
    assert attempts[0] == 0 and attempts[-1] >= 1 and attempts == sorted(attempts), f"no restart recorded: {attempts}"
    restored = attempts.index(attempts[-1])  # epochs kept from before the kill
    # Resumed from the last checkpoint Ray had registered (a checkpoint still being reported
    # when the node died is redone), not from scratch.
    assert restored >= 1
    assert f"resumed from the checkpoint after epoch {restored}" in result.stdout + result.stderr
