"""The Ray backend's own settings: defaults that the environment can override."""

import json
import os

from microal.backend import ray as ray_backend


def test_environment_defaults_never_override_what_the_user_set(monkeypatch):
    for key in ray_backend.ENVIRONMENT_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    ray_backend.set_environment_defaults()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"
    assert (
        os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == ray_backend.ENVIRONMENT_DEFAULTS["RAY_TRAIN_ENABLE_PRINT_PATCH"]
    )


def _spec(tmp_path, name: str, cpus_per_worker: float = 1, **options) -> ray_backend.RunSpec:
    return ray_backend.RunSpec(
        name=name,
        storage_path=str(tmp_path / "storage"),
        cpus_per_worker=cpus_per_worker,
        score=("score", "max"),
        export_dir=tmp_path / name,
        export_files=("state.json",),
        **options,
    )


def test_one_worker_fits_reuse_a_pooled_worker_and_survive_losing_it(ray_local, tmp_path):
    import json

    import pytest

    from microal.errors import MicroalError

    # Defined here: Ray pickles a nested function by value (the test module is not importable there).
    def _counting_loop(job: dict, session) -> None:
        """A training loop in miniature: resumes from its checkpoint, reports one per epoch, and can
        lose its process at an epoch (the first attempt only) or raise."""
        import json
        import os
        import tempfile
        from pathlib import Path

        with session.restored_checkpoint() as folder:
            start = json.loads((folder / "state.json").read_text())["epoch"] if folder else 0
        for epoch in range(start + 1, job["epochs"] + 1):
            if job.get("raise_at") == epoch:
                raise ValueError(f"a bad value at epoch {epoch}")
            if job.get("die_at") == epoch and start == 0:
                os._exit(1)  # the worker process is lost mid-run
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "state.json").write_text(json.dumps({"epoch": epoch, "pid": os.getpid(), "start": start}))
                session.report({"epoch": epoch, "score": epoch / 10, "start": start}, Path(tmp))

    def state(name: str, which: str = "best") -> dict:
        return json.loads((tmp_path / name / f"{which}_state.json").read_text())

    first = ray_backend.fit(_counting_loop, {"epochs": 3}, _spec(tmp_path, "a"))
    assert first.best_metrics["epoch"] == 3 and state("a")["epoch"] == 3
    assert ray_backend.idle_workers() >= 1
    second = ray_backend.fit(_counting_loop, {"epochs": 2}, _spec(tmp_path, "b"))
    assert state("b")["pid"] == state("a")["pid"], "the second fit started a new worker"
    assert second.loop_seconds < second.seconds and second.ray_seconds < first.ray_seconds + 1

    # The worker's process dies in epoch 2: a new worker resumes after epoch 1.
    ray_backend.fit(_counting_loop, {"epochs": 3, "die_at": 2}, _spec(tmp_path, "c", max_failures=1))
    assert state("c", "last") == {"epoch": 3, "pid": state("c", "last")["pid"], "start": 1}
    assert state("c", "last")["pid"] != state("a")["pid"]
    with pytest.raises(MicroalError, match="worker was lost.*max_failures = 0"):
        ray_backend.fit(_counting_loop, {"epochs": 3, "die_at": 2}, _spec(tmp_path, "d"))
    # An error of the loop itself is reported, not retried.
    with pytest.raises(MicroalError, match="training 'e' failed: a bad value at epoch 2"):
        ray_backend.fit(_counting_loop, {"epochs": 3, "raise_at": 2}, _spec(tmp_path, "e", max_failures=3))


def test_a_batch_operation_borrows_the_idle_fit_worker_with_all_its_threads(ray_local, tmp_path):
    """On 2 CPUs a 2-CPU fit worker and two 1-CPU batch workers cannot coexist: scoring runs in
    the idle fit worker (2 torch threads) and the next fit finds it still there."""

    def _report_pid(job: dict, session) -> None:
        import json
        import os
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.json").write_text(json.dumps({"pid": os.getpid()}))
            session.report({"score": 1.0}, Path(tmp))

    def _threads_and_pid(worker, batch: list) -> list:
        import os

        import torch

        return [(item, torch.get_num_threads(), os.getpid()) for item in batch]

    def fitted_pid(name: str) -> int:
        ray_backend.fit(_report_pid, {}, _spec(tmp_path, name, cpus_per_worker=2))
        return json.loads((tmp_path / name / "best_state.json").read_text())["pid"]

    ray_backend.release_workers()
    fit_pid = fitted_pid("a")
    # The factory is a builtin (picklable, comparable); each item reports the threads it ran on.
    results = ray_backend.map_batches(dict, _threads_and_pid, list(range(6)), batch_size=2)
    rows = [row for batch in results for row in batch]
    assert [item for item, _, _ in rows] == list(range(6)), "results out of order"
    assert {pid for _, _, pid in rows} == {fit_pid}
    assert {threads for _, threads, _ in rows} == {2}
    assert ray_backend.idle_workers() == 1
    assert fitted_pid("b") == fit_pid, "the next fit started a new worker"
