"""A time budget for a fit (`training.budget: 20min`): a short timing probe on the worker measures
what an epoch costs on this machine (training steps, validation, a checkpoint), and the run gets
as many epochs as fit before the deadline, so the learning-rate schedule ends on time.

The budget counts from the moment the job was built on the driver (Ray's start-up is part of
it). After each epoch's training steps the count is measured again from the epochs so far (wall
time between epoch starts, so reporting and checkpoint uploads count too) and the cosine schedule
is stretched or shortened to it; when no further epoch fits, the current one is the last (it
validates and keeps a checkpoint).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from microal.models.model_file import unwrap

PROBE_STEPS = 3  # timed training steps, after one untimed (allocation, autotuning)
PROBE_EPOCH = 1_000_000  # the probe's windows come from an epoch the run never reaches
RESERVE_SHARE, RESERVE_MIN_S = 0.03, 10.0  # kept for exporting the best model after the last epoch
FIRST_GUESS_SLACK = 1.15  # the probe misses reporting and checkpoint uploads; measured epochs replace it


@dataclass
class EpochCost:
    step_s: float
    steps: int
    validation_s: float  # one full validation
    checkpoint_s: float

    def epoch_s(self, validate_every: int, checkpoint_every: int) -> float:
        return self.step_s * self.steps + self.validation_s / validate_every + self.checkpoint_s / checkpoint_every


@dataclass
class TimeBudget:
    started_at: float  # time.time() when the job was built
    seconds: float

    @property
    def deadline(self) -> float:
        return self.started_at + self.seconds - max(RESERVE_MIN_S, RESERVE_SHARE * self.seconds)

    def epochs_that_fit(self, cost: EpochCost, validate_every: int, checkpoint_every: int, cap: int) -> int:
        left = self.deadline - time.time()
        per_epoch = cost.epoch_s(validate_every, checkpoint_every) * FIRST_GUESS_SLACK
        return int(max(1, min(cap, math.floor(left / per_epoch))))

    def epochs_from(self, epoch: int, epoch_starts: list[float], first_guess_s: float, cap: int) -> int:
        """The total number of epochs, decided during epoch `epoch` (0-based) from the wall time
        between the epoch starts so far (`first_guess_s` before there are two)."""
        per_epoch = (epoch_starts[-1] - epoch_starts[0]) / (len(epoch_starts) - 1) if len(epoch_starts) > 1 else None
        per_epoch = per_epoch or first_guess_s
        fit = math.floor((self.deadline - epoch_starts[-1]) / per_epoch)
        return int(min(cap, epoch + max(1, fit)))


def probe_cost(net, loader, optimizer_factory, batch_loss_factory, compute, validate_once) -> EpochCost:
    """Time training steps of a copy of the network (the run itself is untouched), one
    validation batch pass (`validate_once(net)` returns its seconds) and one checkpoint write."""
    model = copy.deepcopy(unwrap(net))
    optimizer = optimizer_factory(model)
    batch_loss = batch_loss_factory(model)
    model.train()
    sampler = loader.sampler
    epoch = sampler.epoch
    sampler.set_epoch(PROBE_EPOCH)
    times = []
    try:
        batches = iter(loader)
        for _ in range(PROBE_STEPS + 1):
            batch = next(batches, None)
            if batch is None:
                break
            started = time.perf_counter()
            with compute.autocast():
                loss = batch_loss(*(compute.to_device(t) for t in batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if compute.device.type == "cuda":
                torch.cuda.synchronize(compute.device)
            times.append(time.perf_counter() - started)
    finally:
        sampler.set_epoch(epoch)
    step_s = sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else (times[0] if times else 0.0)
    model.eval()
    validation_s = validate_once(model)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(tmp) / "probe.pt")
        checkpoint_s = time.perf_counter() - started
    return EpochCost(step_s, len(loader), validation_s, checkpoint_s)


def planned_epochs(history: list[dict]) -> int | None:
    """The number of epochs a budgeted run planned last (kept in its history), for its resume;
    None when it planned none yet."""
    planned = [row["epochs_planned"] for row in history if "epochs_planned" in row]
    return int(planned[-1]) if planned else None


def agree_on(epochs: int, device: torch.device) -> int:
    """Every worker trains the same number of epochs (DDP steps in lockstep): the fewest any measured."""
    if not (dist.is_available() and dist.is_initialized()):
        return epochs
    value = torch.tensor([epochs], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())
