"""A time budget: the warm-up + cosine schedule stretched to the epochs that fit, the pace
re-measured each epoch, and a real fit (one process, no Ray) that ends on time with its learning
rate at zero."""

import copy
import math
import time

import pytest
import torch
from conftest import quick_config_dict

from microal.config import parse_config
from microal.data.tiles import load_tiles
from microal.training.budget import TimeBudget, probe_cost
from microal.training.jobs import build_job
from microal.training.local import LocalSession
from microal.training.loop import WarmupCosine, make_loader, set_schedule_epochs, warmup_cosine, worker_compute
from microal.training.supervised import train_worker, training_datasets


def _rates(scheduler, epochs):
    rates = []
    for _ in range(epochs):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_without_warm_up_the_schedule_is_cosine_annealing():
    ours = _rates(warmup_cosine(_optimizer(), 10, 0.0), 10)
    optimizer = _optimizer()
    torch_cosine = _rates(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10), 10)
    assert ours == pytest.approx(torch_cosine)


def test_warm_up_rises_linearly_then_decays_to_zero_and_stretches_when_told():
    schedule = WarmupCosine(20, 0.1)  # two warm-up epochs
    assert [schedule(e) for e in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert schedule(20) == pytest.approx(0.0, abs=1e-12) and all(schedule(e) > 0 for e in range(20))
    scheduler = warmup_cosine(_optimizer(), 20, 0.1)
    _rates(scheduler, 5)
    set_schedule_epochs(scheduler, 40)  # a budget found room for more epochs
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * WarmupCosine(40, 0.1)(5))
    assert scheduler.get_last_lr() == [scheduler.optimizer.param_groups[0]["lr"]]


def test_the_number_of_epochs_follows_the_measured_pace():
    budget = TimeBudget(started_at=1000.0, seconds=400.0)  # deadline 1000 + 400 - 12 = 1388
    assert budget.deadline == pytest.approx(1388.0)
    # first epoch: only the probe's guess (40 s) -> (1388 - 1020) / 40 = 9 epochs from epoch 0
    assert budget.epochs_from(0, [1020.0], 40.0, cap=1000) == 9
    # measured: 20 s per epoch; from epoch 3 (started at 1080): 3 + floor(308 / 20) = 18
    assert budget.epochs_from(3, [1020.0, 1040.0, 1060.0, 1080.0], 40.0, cap=1000) == 18
    assert budget.epochs_from(3, [1020.0, 1040.0, 1060.0, 1080.0], 40.0, cap=10) == 10  # training.epochs caps
    assert budget.epochs_from(7, [1380.0], 40.0, cap=1000) == 8  # no time left: this epoch is the last


def test_the_probe_leaves_the_run_untouched(tiled, synth_dir):
    ws, _, _ = tiled
    cfg = parse_config(quick_config_dict(synth_dir, precision="fp32"))
    job = build_job("supervised", cfg, ws.tiles).job
    session = LocalSession(cpus=2)
    train_set, _ = training_datasets(job.data, cfg, load_tiles(ws.tiles), rank=0)
    loader = make_loader(train_set, 4, session, cfg.training, seed=0)
    loader.sampler.set_epoch(3)
    from microal.models.factory import build_model

    net = build_model(cfg.model, cfg.num_classes)
    before = copy.deepcopy(net.state_dict())
    loss = torch.nn.CrossEntropyLoss(ignore_index=255)
    cost = probe_cost(
        net,
        loader,
        lambda model: torch.optim.AdamW(model.parameters(), lr=0.1),
        lambda model: lambda images, masks: loss(model(images), masks.long()),
        worker_compute(session, cfg.training),
        lambda model: 0.5,
    )
    assert cost.step_s > 0 and cost.steps == len(loader) and cost.validation_s == 0.5 and cost.checkpoint_s > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # trained a copy
    assert loader.sampler.epoch == 3


def test_a_fit_with_a_time_budget_ends_on_time_with_its_schedule_finished(tiled, synth_dir, tmp_path):
    ws, _, _ = tiled
    cfg = parse_config(quick_config_dict(synth_dir, epochs=10_000, budget="20s", warmup=0.1, precision="fp32"))
    job = build_job("supervised", cfg, ws.tiles).job
    session = LocalSession(cpus=2, checkpoint_root=tmp_path)
    train_worker(job, session)
    finished = time.time()
    metrics = [m for m, _ in session.reports]
    epochs = len(metrics)
    assert epochs >= 3
    assert finished - job.started_at <= 20  # the deadline leaves 10 s for the export
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert metrics[-1]["epochs_planned"] == epochs  # the last epoch was planned as the last
    assert metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine ended with the run
    assert not math.isnan(metrics[-1]["val_miou"]) and session.checkpointed_epochs[-1] == epochs


def test_training_epochs_caps_a_time_budget(tiled, synth_dir, tmp_path):
    ws, _, _ = tiled
    cfg = parse_config(quick_config_dict(synth_dir, epochs=2, budget="10min", precision="fp32"))
    session = LocalSession(cpus=2, checkpoint_root=tmp_path)
    train_worker(build_job("supervised", cfg, ws.tiles).job, session)
    assert [m["epoch"] for m, _ in session.reports] == [1, 2]
