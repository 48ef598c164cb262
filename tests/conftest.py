"""Shared fixtures: a small synthetic data set, configs for quick training, a local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Tests start their own embedded Ray; never attach to a cluster a developer has running.
os.environ.pop("RAY_ADDRESS", None)
# A failing hub download should fail at once in tests, not after minutes of retries.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "2")


def shared_dataset(name: str) -> Path:
    """Path to a dataset in ../shared/datasets, or skip (with the reason) where it is absent."""
    path = SHARED_DATASETS / name
    if not (path / "manifest.csv").exists():
        pytest.skip(f"{path} not present (a user's clone has no ../shared); CI runs this test")
    return path


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small two-domain synthetic set: 6 SEM-like (3 samples) + 2 light-optical-like images."""
    from microal.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, n_per_domain=(6, 2), field_um=16.0, seed=1)
    return out


def quick_config_dict(synth_dir: Path, **training) -> dict:
    """The synthetic set's own config, shrunk so a training run takes seconds."""
    config = yaml.safe_load((synth_dir / "microal.yaml").read_text())
    config["tiling"] = {"target_um_per_px": 0.125, "tile_size": 32, "margin": 16}
    config["split"]["n_folds"] = 2
    config["training"].update(
        {"epochs": 2, "batch_size": 8, "sampling": "random", "samples_per_epoch": 16, "augmentation": "basic"}
    )
    config["training"].update(training)
    return config


def uda_config_dict(synth_dir: Path, training: dict | None = None, **uda) -> dict:
    """The quick config adapting domain A to domain B (B is the target, not a held-out test set)."""
    config = quick_config_dict(synth_dir, **{"epochs": 2, **(training or {})})
    config["split"].pop("test")
    config["uda"] = {"target_domains": ["B"], "weight_adv": 0.01, "weight_adv_aux": 0.002, **uda}
    return config


@pytest.fixture
def quick_config(synth_dir):
    from microal.config import parse_config

    return parse_config(quick_config_dict(synth_dir))


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray instance (2 CPUs) for every test that trains."""
    from microal.backend import ray as ray_backend

    ray_backend.init_ray(num_cpus=2)
    yield
    ray_backend.shutdown_ray()


def attach_to_ray_local() -> list[str]:
    """CLI arguments that attach a `microal` subprocess to the tests' Ray (as to any cluster),
    rather than it starting and stopping one of its own (about 20 s a time here). The CPUs idle
    pooled workers of earlier tests hold go back to the cluster first. Needs ray_local."""
    import ray

    from microal.backend import ray as ray_backend

    ray_backend.release_workers()
    return ["--address", ray.get_runtime_context().gcs_address]


@pytest.fixture(scope="session")
def tiled(synth_dir, tmp_path_factory):
    """Catalog and tile set of the synthetic set under the quick config."""
    from microal.config import parse_config
    from microal.data.catalog import ingest
    from microal.data.tiles import build_tiles
    from microal.workspace import Workspace

    config = parse_config(quick_config_dict(synth_dir))
    ws = Workspace.at(tmp_path_factory.mktemp("work"))
    catalog, _ = ingest(synth_dir / "manifest.csv", config, ws.catalog, progress=False)
    build_tiles(catalog, config, ws.tiles, progress=False)
    return ws, catalog, config


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def labelstudio_server(tmp_path_factory):
    """A real Label Studio server (its own venv, loopback only), shared by the Label Studio tests;
    skipped where Label Studio is not installed. A test that restarts it puts the new process in
    state["server"]."""
    from microal.errors import MicroalError
    from microal.labelstudio.server import find_executable, new_token_file, start_server

    try:
        find_executable()
    except MicroalError as error:
        pytest.skip(str(error))
    root = tmp_path_factory.mktemp("ls")
    token = new_token_file(root / "token")
    files_root = root / "work"
    files_root.mkdir()
    port = free_port()
    # Label Studio refuses to call webhooks on 127.0.0.1 unless told (SSRF protection).
    env = {"SSRF_PROTECTION_ENABLED": "false"}
    process = start_server(root / "data", port, files_root, token, password="expert-password-1", extra_env=env)
    state = {"server": process, "token": token, "root": root, "files_root": files_root, "port": port, "env": env}
    yield state
    state["server"].stop()


def checkpoint_dirs(run_storage: Path) -> list[Path]:
    """A Ray Train run's checkpoint folders (beside them: checkpoint_manager_snapshot.json)."""
    return sorted(p for p in Path(run_storage).glob("checkpoint_*") if p.is_dir())


@pytest.fixture
def browser():
    """Debian's Chromium, headless, driven by selenium (skipped where it is not installed)."""
    import shutil

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        # Without these, Chromium keeps trying this closed network.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def rendered_report(browser, path: Path) -> dict:
    """Open an HTML report and read back what Chromium rendered: each figure's loaded size,
    table headers, section headings and notes of missing parts."""
    browser.get(path.resolve().as_uri())
    return browser.execute_script(
        """
        const images = [...document.querySelectorAll('figure.plot img')];
        return {
          images: images.map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
          headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
          headers: [...document.querySelectorAll('table.data')].map(
            t => [...t.querySelectorAll('th')].map(h => h.textContent)),
          missing: [...document.querySelectorAll('p.missing')].map(p => p.textContent),
          text: document.body.innerText,
          external: [...document.querySelectorAll('[src]')].filter(
            e => !e.getAttribute('src').startsWith('data:')).length,
        };
        """
    )
