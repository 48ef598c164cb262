"""Run by tests/backend/test_fault_tolerance.py in its own process: a two-node Ray cluster on this
machine, `microal train` against it, the worker node killed mid-training and replaced.

Usage: python fault_tolerance_run.py CONFIG.yaml WORKDIR  -> prints one JSON line at the end.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

from ray.cluster_utils import Cluster

from microal.backend import ray as ray_backend
from microal.config import load_config
from microal.training.jobs import train
from microal.workspace import Workspace

FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}


def checkpoints_written(run_storage: Path) -> int:
    """How many checkpoints the run has written: its newest folder's index + 1. (Counting the
    folders would not do: the store prunes them to the best few and the latest, so while each
    epoch improves on the last there may never be three at once.)"""
    indices = [int(p.name.rsplit("_", 1)[1]) for p in run_storage.glob("checkpoint_*") if p.is_dir()]
    return max(indices) + 1 if indices else 0


def main() -> None:
    config = load_config(sys.argv[1])
    ws = Workspace.at(sys.argv[2])
    ray_backend.set_environment_defaults()  # before the nodes start: they inherit the environment
    # The GCS declares a silent node dead after `threshold` missed checks `period` apart (Ray's
    # defaults: 5 x 3 s); a test that kills a node waits that long. The recovery is the same.
    for key, value in FAST_NODE_DEATH.items():
        os.environ.setdefault(key, value)
    # Head without CPUs: the Train workers can only run on the worker node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray_backend.init_ray(address=cluster.address)
    outcome = {}

    def run():
        try:
            outcome["summary"] = train(config, ws.tiles, ws.run("ft"), str(ws.ray_storage), "ft")
        except Exception as error:  # reported to the test, which fails on it
            outcome["error"] = repr(error)

    thread = threading.Thread(target=run)
    thread.start()
    storage = ws.ray_storage / "ft"
    deadline = time.time() + 300
    while checkpoints_written(storage) < 3 and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    checkpoints_at_kill = checkpoints_written(storage)
    cluster.remove_node(worker, allow_graceful=False)  # the worker node's processes are killed
    killed_at = time.time()
    time.sleep(3)
    cluster.add_node(num_cpus=2)  # a replacement node joins
    thread.join(timeout=600)
    report = {"checkpoints_at_kill": checkpoints_at_kill, "error": outcome.get("error")}
    if "summary" in outcome:
        history = outcome["summary"].history
        report["history"] = history[["epoch", "attempt"]].to_dict("records")
        report["seconds_after_kill"] = time.time() - killed_at
    ray_backend.shutdown_ray()
    cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
