"""Throughput of microal's own loops against the bare network on the same device.

On a generated data set (no ../shared needed): training windows/s of the supervised loop
(`train_worker` in one process: loader, augmentation, mixed precision, loss, optimiser) and
scoring tiles/s of a 5-member ensemble (`TileScorer.score`: cutting windows, members' forward
passes, acquisition maps on the device), each beside its ceiling: the same resnet18 U-Net
(channels-last, the same precision) on random tensors already on the device, forward + backward +
AdamW step for training and five forward passes for scoring. 256 px windows (224 + 2 x 16).

Runs without Ray (only PyTorch and microal's data stack), so it can be taken to a GPU machine.
Last line:

    throughput device=<name> train_windows_per_s=<x> train_ceiling=<y> score_tiles_per_s=<x> score_ceiling=<y>

Usage: python benchmarks/throughput.py [--device cuda] [--precision auto] [--out bench-out/throughput]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from common import fresh, parser

MEMBERS = 5


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "_")
    import platform

    return f"cpu-{torch.get_num_threads()}threads-{platform.machine()}"


def rate(run, items_per_call: int, calls: int, device: torch.device, warm_up: int = 2) -> float:
    """Items/s of `run()` after `warm_up` untimed calls, the device's queue drained at both ends."""
    for _ in range(warm_up):
        run()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(calls):
        run()
    synchronise(device)
    return items_per_call * calls / (time.perf_counter() - started)


def ceiling_training(config, device, precision: str, batch: int, steps: int) -> float:
    """Windows/s of forward + loss + backward + step on random tensors already on the device."""
    from microal.models.compute import autocast, channels_last, grad_scaler
    from microal.models.factory import build_model

    net = channels_last(build_model(config.model, config.num_classes)).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = grad_scaler(device, precision)
    window = config.tiling.window
    x = torch.randn(batch, 1, window, window, device=device)
    y = torch.randint(0, config.num_classes, (batch, window, window), device=device)

    def step():
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return rate(step, batch, steps, device)


@torch.no_grad()
def ceiling_scoring(member_files, device, precision: str, batch: int, window: int, repeats: int) -> float:
    """Tiles/s of five members' forward passes on a batch already on the device."""
    from microal.models.model_file import load_model

    members = [load_model(path, device=device, precision=precision) for path in member_files]
    x = torch.randn(batch, 1, window, window, device=device)

    def forward():
        for member in members:
            member.forward(x)

    return rate(forward, batch, repeats, device)


def main() -> int:
    args_parser = parser(__doc__, "throughput")
    args_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args_parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    args_parser.add_argument("--batch-size", type=int, help="training batch (default: 32 on a GPU, 8 on a CPU)")
    args_parser.add_argument("--windows", type=int, help="training windows per epoch (default: 1024 GPU, 48 CPU)")
    args_parser.add_argument("--tiles", type=int, help="tiles to score (default: 8192 GPU, 96 CPU)")
    args_parser.add_argument("--loader-workers", type=int, help="training.loader_workers (default: microal's)")
    args = args_parser.parse_args()

    from microal.config import apply_overrides, parse_config
    from microal.data.catalog import ingest
    from microal.data.splits import TRAIN, assign_splits
    from microal.data.synth import generate, synth_config
    from microal.data.tiles import build_tiles, load_tiles
    from microal.models.compute import resolve_precision
    from microal.models.factory import build_model
    from microal.models.model_file import save_model_file
    from microal.training.local import LocalSession
    from microal.training.payloads import SupervisedData, TrainJob
    from microal.training.supervised import train_worker

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    cpus = len(__import__("os").sched_getaffinity(0))
    torch.set_num_threads(cpus)
    batch = args.batch_size or (32 if gpu else 8)
    windows = args.windows or (1024 if gpu else 48)
    tiles_wanted = args.tiles or (8192 if gpu else 96)
    precision = resolve_precision(args.precision, device)
    out = fresh(args.out)
    started = time.time()

    # A generated set: 6 micrographs of 800 x 800 px, cut into 224 px tiles with a 16 px margin.
    generate(out / "data", n_per_domain=(6, 1), field_um=100.0, seed=0)
    base = synth_config([])
    base["split"] = {"method": "group_kfold", "n_folds": 2, "fold": 0}
    base["model"] = {"arch": "unet", "encoder": "resnet18", "encoder_weights": "none"}
    base["tiling"] = {"target_um_per_px": 0.125, "tile_size": 224, "margin": 16}
    config = apply_overrides(
        parse_config(base, source="throughput"),
        {
            "training.epochs": 3,
            "training.batch_size": batch,
            "training.samples_per_epoch": windows,
            "training.augmentation": "extended",
            "training.precision": precision,
            "training.use_gpu": gpu,
            "training.loader_workers": args.loader_workers,
            "training.checkpoint_every": 1000,  # the last epoch only: this measures training
        },
    )
    catalog, _ = ingest(out / "data" / "manifest.csv", config, out / "catalog.parquet", progress=False)
    build_tiles(catalog, config, out / "tiles", progress=False)
    tileset = load_tiles(out / "tiles")
    splits = assign_splits(tileset.images, config.split)
    train_images = tileset.images.image_id[(splits == TRAIN).values].tolist()
    print(f"device {device} ({device_name(device)}), precision {precision}, {cpus} CPU threads", flush=True)

    # Training: microal's loop, no validation set; the first epoch (start-up, loader processes) is not timed.
    job = TrainJob(config, str(out / "tiles"), SupervisedData(train_images, []))
    session = LocalSession(cpus=cpus, device=device)
    train_worker(job, session)
    epoch_seconds = [m["epoch_seconds"] for m, _ in session.reports[1:]]
    train_rate = windows / statistics.median(epoch_seconds)
    train_ceiling = ceiling_training(config, device, precision, batch, steps=max(8, windows // batch))
    print(f"training: {train_rate:.1f} windows/s in microal's loop, ceiling {train_ceiling:.1f}", flush=True)

    # Scoring: five untrained members (speed does not depend on the weights).
    from microal.active.scoring import TileScorer

    members = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        path = out / f"member{seed}.pt"
        save_model_file(path, build_model(config.model, config.num_classes), config, 1, {}, [])
        members.append(str(path))
    forward_batch = 64 if gpu else 8
    scorer = TileScorer(members, str(out / "tiles"), device=str(device), forward_batch=forward_batch)
    ids = tileset.tiles.tile_id.tolist()
    ids = (ids * (tiles_wanted // len(ids) + 1))[:tiles_wanted]
    scorer.score(ids[:forward_batch], ["entropy", "bald"])  # warm-up
    synchronise(device)
    score_started = time.perf_counter()
    scorer.score(ids, ["entropy", "bald"])
    synchronise(device)
    score_rate = len(ids) / (time.perf_counter() - score_started)
    repeats = max(3, tiles_wanted // forward_batch // 4)
    score_ceiling = ceiling_scoring(members, device, precision, forward_batch, config.tiling.window, repeats)
    print(f"scoring: {score_rate:.1f} tiles/s in TileScorer.score, ceiling {score_ceiling:.1f}", flush=True)
    print(f"minutes={(time.time() - started) / 60:.1f}")
    print(
        f"throughput device={device_name(device)} train_windows_per_s={train_rate:.1f} "
        f"train_ceiling={train_ceiling:.1f} score_tiles_per_s={score_rate:.1f} score_ceiling={score_ceiling:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
