"""Active learning with a real Label Studio server (its own venv, loopback only), started here.

The tests run in order on one server and one active-learning project: push with
pre-annotations, experts annotate through the API, pull, two annotators, flags and skips,
`microal al run` killed and restarted, Label Studio restarted, and the labelling page in
headless Chromium.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, attach_to_ray_local, free_port, quick_config_dict, rendered_report

from microal.active import rounds
from microal.active.ensemble import Ensemble
from microal.active.labellers import OracleLabeller
from microal.active.pool import LABELLED, QUEUED, REJECTED, UNLABELLED
from microal.active.rounds import init_project, load_project
from microal.config import parse_config
from microal.data.tiling import IGNORE_INDEX
from microal.errors import MicroalError
from microal.labelstudio.client import LabelStudioClient, mask_to_results, results_to_mask
from microal.labelstudio.config import check_label_config, label_config
from microal.labelstudio.loop import (
    LabelStudioLabeller,
    WebhookListener,
    connect,
    label_cost,
    pull,
    push,
    run_round,
)
from microal.labelstudio.server import (
    DATABASE_FILE,
    find_executable,
    port_is_free,
    seed_database,
    start_server,
    template_database,
)

ARTIFACTS = Path(os.environ.get("MICROAL_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def server(labelstudio_server):
    return labelstudio_server


@pytest.fixture(scope="module")
def project_config(synth_dir, server):
    raw = quick_config_dict(synth_dir, epochs=2, samples_per_epoch=16)
    raw["al"] = {"members": 1, "batch_size": 5, "acquisition": "entropy", "score_batch_size": 64}
    raw["labelstudio"] = {
        "url": server["server"].url,
        "min_new_annotations": 3,
        "poll_seconds": 1.0,
        "files_root": str(server["files_root"]),
    }
    return parse_config(raw)


def _small_start(root, config, tiles_root):
    """A project where a few tiles came labelled; the rest is the pool."""
    project = init_project(root, config, tiles_root)
    keep = project.pool.ids(LABELLED)[:8]
    project.pool.table.loc[~project.pool.table.tile_id.isin(keep), ["state", "round"]] = [UNLABELLED, -1]
    project.pool.save()
    return load_project(root, config, tiles_root)


@pytest.fixture(scope="module")
def loop(ray_local, tiled, server, project_config):
    """An active-learning project whose round-0 batch has been pushed to Label Studio."""
    ws, _, _ = tiled
    root = server["files_root"] / "al" / "ls"
    project = _small_start(root, project_config, ws.tiles)
    client = LabelStudioClient(server["server"].url, server["token"])
    target = connect(project, client, server["files_root"])
    round_, pushed = run_round(project, target)
    return {"project": project, "target": target, "client": client, "pushed": pushed, "ws": ws, "root": root}


def _truth(project, tile_id) -> np.ndarray:
    tile = project.tileset.tiles.set_index("tile_id").loc[tile_id]
    grid = project.tileset.grid(tile.image_id)
    y, x = int(tile.y) + grid.margin, int(tile.x) + grid.margin
    return np.array(project.tileset.mask_array(tile.image_id)[y : y + grid.tile_size, x : x + grid.tile_size])


def _queued(loop) -> list[tuple[str, int]]:
    table = loop["project"].pool.table
    queued = table[table.state == QUEUED].sort_values("tile_id")
    return list(zip(queued.tile_id, queued.task_id.astype(int)))


def test_a_new_data_folder_starts_from_the_migrated_template_and_an_existing_one_is_kept(tmp_path):
    executable = tmp_path / "venv" / "bin" / "label-studio"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    assert template_database(str(executable)) is None
    assert not seed_database(tmp_path / "data", str(executable))  # no template: Label Studio migrates
    template = tmp_path / "venv" / "microal-empty-database" / DATABASE_FILE
    template.parent.mkdir()
    template.write_bytes(b"migrated")
    (tmp_path / "data").mkdir()
    assert seed_database(tmp_path / "data", str(executable))
    assert (tmp_path / "data" / DATABASE_FILE).read_bytes() == b"migrated"
    (tmp_path / "data" / DATABASE_FILE).write_bytes(b"a lab's projects")
    assert not seed_database(tmp_path / "data", str(executable))
    assert (tmp_path / "data" / DATABASE_FILE).read_bytes() == b"a lab's projects"
    assert [p.name for p in (tmp_path / "data").iterdir()] == [DATABASE_FILE]


def test_the_session_server_started_without_migrating_where_install_made_a_template(server):
    if template_database(find_executable()) is None:
        pytest.skip("no migrated template beside label-studio (labelstudio/install.sh makes it)")
    log = (server["root"] / "data" / "label-studio.log").read_text()
    # Its token works (the other tests use it): the user was created at the first start.
    assert "Initializing database" not in log and "Starting development server" in log


def test_label_config_follows_the_class_table(project_config):
    xml = label_config(project_config)
    check_label_config(xml, project_config)
    other = project_config.model_copy(update={"classes": project_config.classes[::-1]})
    with pytest.raises(Exception, match="differ from the class table"):
        check_label_config(xml, other)
    for name in ("uhcs", "nasa-super"):  # the shipped configs are the generated ones
        from microal.config import load_config

        shipped = (REPO / "labelstudio" / f"{name}.xml").read_text()
        assert shipped == label_config(load_config(REPO / "examples" / f"{name}.yaml"))


def test_rle_round_trip_is_pixel_exact_and_unpainted_stays_unknown():
    mask = np.random.default_rng(0).integers(0, 3, (40, 40)).astype(np.uint8)
    mask[:5] = IGNORE_INDEX  # nobody painted here
    results = mask_to_results(mask, ["a", "b", "c"])
    assert len(results) == 3 and all(r["value"]["format"] == "rle" for r in results)
    np.testing.assert_array_equal(results_to_mask(results, ["a", "b", "c"], (40, 40)), mask)


def test_push_queues_tiles_with_predictions_once(loop, server):
    project, target, client = loop["project"], loop["target"], loop["client"]
    queued = _queued(loop)
    assert len(queued) == 5 and len(loop["pushed"].created) == 5
    selection = pd.read_csv(project.round_dir(0) / "selection.csv").set_index("tile_id")
    version = (project.round_dir(0) / "members.json").read_text()
    for tile_id, task_id in queued:
        task = client.task(task_id)
        assert task["data"]["tile_id"] == tile_id
        (prediction,) = task["predictions"]
        assert prediction["model_version"] in version
        # The entropy of the selection, on Label Studio's [0, 1] scale (divided by log C).
        assert prediction["score"] == pytest.approx(selection.loc[tile_id, "score"] / np.log(3), rel=1e-5)
        assert task["data"]["acquisition_score"] == pytest.approx(selection.loc[tile_id, "score"])
        mask = results_to_mask(prediction["result"], project.config.class_names, (32, 32))
        assert (mask != IGNORE_INDEX).all()  # the ensemble labels every pixel of the tile
        # The tile image is served by Label Studio itself (Local Files), no public URL.
        request = urllib.request.Request(
            server["server"].url + task["data"]["image"], headers={"Authorization": f"Token {server['token']}"}
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 200 and response.read()[:4] == b"\x89PNG"
    again = push(project, target, selection.reset_index(), Ensemble.load(project.round_dir(0)))
    assert again.created == [] and len(client.task_tiles(target.project_id)) == 5


def test_pull_expert_masks_pixel_exact_with_lead_time(loop):
    project, target, client = loop["project"], loop["target"], loop["client"]
    (first, task1), (second, task2) = _queued(loop)[:2]
    painted = {}
    for tile_id, task_id in ((first, task1), (second, task2)):
        mask = _truth(project, tile_id)
        mask[:4] = IGNORE_INDEX  # the expert left the top rows unpainted
        painted[tile_id] = mask
        client.annotate(task_id, mask_to_results(mask, project.config.class_names), lead_time=30.0)
    report = pull(project, target)
    assert sorted(report.labelled) == sorted(painted)
    tiles = project.tileset.tiles.set_index("tile_id", drop=False)
    for tile_id, mask in painted.items():
        np.testing.assert_array_equal(project.labels.centre(tiles.loc[tile_id]), mask)
        assert project.pool.table.set_index("tile_id").loc[tile_id, "state"] == LABELLED
    cost = label_cost(project)
    assert cost.set_index("round").loc[1, "hours"] == pytest.approx(60 / 3600)
    assert pull(project, target).labelled == []  # nothing new: nothing done twice


def test_the_oracle_and_the_experts_run_the_same_round_on_the_same_pool(loop, server, tmp_path):
    """One round, two labellers: on the same pool and ensemble both select the same tiles; the
    oracle labels them at once with a simulated cost, Label Studio queues them, and what the
    experts paint comes back as the same labels, with their lead time as the cost."""
    config, tiles_root = loop["project"].config, loop["ws"].tiles
    oracle_project = _small_start(tmp_path / "oracle", config, tiles_root)
    experts_project = _small_start(server["files_root"] / "al" / "same-round", config, tiles_root)
    oracle = rounds.run_round(oracle_project, OracleLabeller())
    labeller = LabelStudioLabeller(connect(experts_project, loop["client"], server["files_root"]))
    experts = rounds.run_round(experts_project, labeller, members=oracle.ensemble)

    assert oracle.ensemble.version == experts.ensemble.version
    pd.testing.assert_frame_equal(oracle.selection, experts.selection)
    chosen = oracle.selection.tile_id.tolist()
    assert sorted(oracle.handed_over) == sorted(experts.handed_over) == sorted(chosen)
    by_tile = oracle_project.pool.table.set_index("tile_id").loc[chosen]
    assert (by_tile.state == LABELLED).all() and (by_tile["round"] == 1).all()
    costs = oracle_project.costs.read().set_index("tile_id").loc[chosen]
    assert (costs.source == "simulated").all() and (costs.seconds >= 30).all()
    queued = experts_project.pool.table.set_index("tile_id").loc[chosen]
    assert (queued.state == QUEUED).all() and (queued["round"] == 1).all() and queued.task_id.notna().all()
    assert {"train", "epochs", "score", "select", "hand_over", "loops", "ray_per_fit"} <= set(oracle.seconds)
    written = json.loads((oracle_project.round_dir(0) / "timings.json").read_text())
    assert written["train"] == pytest.approx(oracle.seconds["train"], abs=1e-3)
    assert 0 < written["epochs"] <= written["loops"] <= written["train"]
    assert "epochs" not in experts.seconds  # the experts' round took the oracle's ensemble: nothing trained

    for tile_id, task_id in zip(queued.index, queued.task_id.astype(int)):
        mask = _truth(experts_project, tile_id)
        loop["client"].annotate(task_id, mask_to_results(mask, config.class_names), lead_time=45.0)
    assert sorted(pull(experts_project, labeller.target).labelled) == sorted(chosen)
    tiles = experts_project.tileset.tiles.set_index("tile_id", drop=False)
    for tile_id in chosen:
        np.testing.assert_array_equal(
            experts_project.labels.centre(tiles.loc[tile_id]), oracle_project.labels.centre(tiles.loc[tile_id])
        )
    paid = experts_project.costs.read().set_index("tile_id").loc[chosen]
    assert (paid.source == "label studio").all() and (paid.seconds == 45.0).all()
    assert experts_project.current_round == oracle_project.current_round == 1


def test_two_annotators_are_consolidated_with_their_agreement(loop):
    project, target, client = loop["project"], loop["target"], loop["client"]
    tile_id, task_id = _queued(loop)[0]
    truth = _truth(project, tile_id)
    other = truth.copy()
    other[:, :8] = (other[:, :8] + 1) % project.config.num_classes  # the second expert disagrees on a strip
    second = client.ensure_user("second.expert@microal.local", "second-password-1")
    client.annotate(task_id, mask_to_results(truth, project.config.class_names), lead_time=20.0)
    client.annotate(task_id, mask_to_results(other, project.config.class_names), lead_time=40.0, completed_by=second)
    pull(project, target)
    tile = project.tileset.tiles.set_index("tile_id", drop=False).loc[tile_id]
    consolidated = project.labels.centre(tile)
    np.testing.assert_array_equal(consolidated[:, 8:], truth[:, 8:])  # both agree: kept
    assert (consolidated[:, :8] == IGNORE_INDEX).all()  # one against one: left open
    row = project.pool.table.set_index("tile_id").loc[tile_id]
    agreement = float(row.note.split("agreement=")[1].split(";")[0])
    assert row.note.startswith("annotators=2") and 0 < agreement < 1
    # The pool keeps the count and the exact agreement (the note, for people, rounds it).
    assert row.annotators == 2 and row.agreement == pytest.approx(agreement, abs=5e-4)
    assert label_cost(project).set_index("round").loc[1, "mean_agreement"] == pytest.approx(row.agreement)


def test_flagged_and_skipped_tiles_are_rejected(loop):
    project, target, client = loop["project"], loop["target"], loop["client"]
    (flagged, task_flagged), (skipped, task_skipped) = _queued(loop)[:2]
    client.annotate(
        task_flagged,
        [{"from_name": "flags", "to_name": "image", "type": "choices", "value": {"choices": ["imaging artefact"]}}],
        lead_time=5.0,
    )
    client.annotate(task_skipped, [], cancelled=True, lead_time=2.0)
    report = pull(project, target)
    assert sorted(report.rejected) == sorted([flagged, skipped])
    table = project.pool.table.set_index("tile_id")
    assert table.loc[flagged, "state"] == REJECTED and table.loc[flagged, "note"] == "imaging artefact"
    assert table.loc[skipped, "state"] == REJECTED and table.loc[skipped, "note"] == "skipped"
    assert not _queued(loop)


def _al_run(loop, server, tmp_path) -> subprocess.Popen:
    """`al run` in its own process, attached to the tests' Ray."""
    config = tmp_path / "al.yaml"
    config.write_text(yaml.safe_dump(loop["project"].config.model_dump(mode="json")))
    tiles_link = server["files_root"] / "tiles"
    if not tiles_link.exists():
        tiles_link.symlink_to(loop["ws"].tiles)
    env = {**os.environ, "LABEL_STUDIO_TOKEN": server["token"]}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "microal.cli",
            "al",
            "run",
            "-c",
            str(config),
            "-w",
            str(server["files_root"]),
            "--name",
            "ls",
            "--until-round",
            "1",
            *attach_to_ray_local(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def test_al_run_killed_and_restarted_then_label_studio_restarted(loop, server, tmp_path):
    project, client, target = loop["project"], loop["client"], loop["target"]
    before = {r.annotation_id for r in client.annotations(target.project_id)}
    first = _al_run(loop, server, tmp_path)
    round_dir = loop["root"] / "rounds" / "round-1"
    deadline = time.time() + 240
    while not round_dir.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # in the middle of training round 1
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    second = _al_run(loop, server, tmp_path)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-4000:]
    assert "round 1: queued 5 tiles" in output
    # The token is never printed, logged or written into anything microal keeps.
    assert server["token"] not in output
    for path in loop["root"].rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".yaml", ".parquet", ".log", ".txt"}:
            assert server["token"].encode() not in path.read_bytes(), path

    tiles = [tile for tile, _ in client.task_tiles(target.project_id)]
    table = load_project(loop["root"], project.config, loop["ws"].tiles).pool.table
    pushed = table[table.task_id.notna()]
    assert len(tiles) == len(set(tiles)) == len(pushed) == 10  # two rounds of 5, no duplicate
    assert set(pushed[pushed["round"] == 2].tile_id).isdisjoint(pushed[pushed["round"] == 1].tile_id)

    # Label Studio restarted on the same data folder: every annotation is still there.
    server["server"].stop()
    server["server"] = start_server(
        server["root"] / "data", server["port"], server["files_root"], server["token"], extra_env=server["env"]
    )
    restarted = LabelStudioClient(server["server"].url, server["token"])
    assert {r.annotation_id for r in restarted.annotations(target.project_id)} == before
    assert len(restarted.task_tiles(target.project_id)) == 10


def test_labelling_page_shows_tile_and_preannotation(loop, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    table = load_project(loop["root"], loop["project"].config, loop["ws"].tiles).pool.table  # after al run
    tile_id, task_id = table[table.state == QUEUED].iloc[0][["tile_id", "task_id"]]
    url = server["server"].url
    browser.get(f"{url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys("expert@microal.local")
    browser.find_element(By.NAME, "password").send_keys("expert-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda b: "/user/login" not in b.current_url)
    browser.get(f"{url}/projects/{loop['target'].project_id}/data?task={int(task_id)}")
    # The labelling canvas's image (the data table beside it has thumbnails of every task).
    image = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "img[alt='image']")))
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return arguments[0].naturalWidth", image) > 0)
    shown = browser.execute_async_script(
        "const done = arguments[1]; fetch(arguments[0].src).then(r => r.arrayBuffer()).then(b => done(b.byteLength));",
        image,
    )
    assert shown == (loop["target"].files_dir / f"{tile_id}.png").stat().st_size  # this task's tile
    # The pre-annotation is loaded: one brush region per class the ensemble predicted.
    prediction = loop["client"].task(int(task_id))["predictions"][0]["result"]
    regions = WebDriverWait(browser, 30).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, ".lsf-tree__node_type_brushregion")
    )
    assert len(regions) == len(prediction) >= 1
    titles = {e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item__title")}
    assert titles == {r["value"]["brushlabels"][0] for r in prediction}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "labelling-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000


def test_the_project_report_shows_rounds_annotators_cost_and_agreement(loop, browser, tmp_path):
    from microal.report.project import project_report

    report = rendered_report(browser, project_report(loop["root"], tmp_path / "al.html"))
    assert report["images"] and all(done and width > 100 for done, width, _ in report["images"])
    assert report["external"] == 0  # one self-contained file
    for section in ("Rounds", "Who labelled what", "Label cost", "Agreement"):
        assert section in report["headings"]
    assert ["annotator", "tiles", "minutes", "median_s_per_tile"] in report["headers"]
    costs = pd.read_parquet(loop["root"] / "costs.parquet")
    assert costs.annotator.nunique() == 2 and all(a in report["text"] for a in costs.annotator.unique())
    assert ["round", "tiles", "mean_agreement"] in report["headers"]  # two experts labelled one tile
    assert not any("agreement" in note for note in report["missing"])


def test_webhook_wakes_the_loop_when_an_expert_submits(loop, server):
    """`al run --webhook-port`: Label Studio calls the listener on a new annotation, no polling wait."""
    listener = WebhookListener(free_port())
    try:
        loop["client"].ensure_webhook(loop["target"].project_id, listener.url)
        loop["client"].ensure_webhook(loop["target"].project_id, listener.url)  # registered once
        assert loop["client"].webhook_urls(loop["target"].project_id).count(listener.url) == 1
        assert not listener.wait(1.0)  # nothing submitted yet: no call
        table = load_project(loop["root"], loop["project"].config, loop["ws"].tiles).pool.table
        tile_id, task_id = table[table.state == QUEUED].iloc[-1][["tile_id", "task_id"]]
        mask = _truth(loop["project"], tile_id)
        loop["client"].annotate(int(task_id), mask_to_results(mask, loop["project"].config.class_names), lead_time=10.0)
        assert listener.wait(30.0)
    finally:
        listener.close()


def test_serve_command_restarts_on_the_same_data_and_stops_cleanly(loop, server):
    """`microal labelstudio serve` on the tests' data folder: the project is still there, SIGTERM stops it."""
    server["server"].stop()
    env = {**os.environ, "LABEL_STUDIO_TOKEN": server["token"]}
    serve = [sys.executable, "-m", "microal.cli", "labelstudio", "serve", "--data-dir", str(server["root"] / "data"),
             "--port", str(server["port"]), "--files-root", str(server["files_root"])]  # fmt: skip
    process = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        client = LabelStudioClient(server["server"].url, server["token"])
        while time.time() < deadline:
            try:
                client.check()
                break
            except MicroalError:
                time.sleep(1)
        assert len(client.task_tiles(loop["target"].project_id)) == 10
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "Label Studio stopped" in output
    assert server["token"] not in output

    # Stopped while Label Studio is still starting: it is stopped too, not left running on the port.
    process = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert "starting Label Studio" in process.stdout.readline()
    time.sleep(3)  # Label Studio's process is starting, not yet answering
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "Label Studio stopped" in output, output[-2000:]
    left = subprocess.run(
        ["pgrep", "-f", "--", f"--data-dir {server['root'] / 'data'}"], capture_output=True, text=True
    )
    assert left.returncode == 1 and port_is_free(server["port"]), f"Label Studio left running: {left.stdout}"
