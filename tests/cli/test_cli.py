"""The `microal` command line: help, clear errors, each step, and the README's demo."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import quick_config_dict

from microal.cli.main import COMMANDS, main

# A line of Ray's own: a worker's prefixed output, or a log record of Ray's driver or raylet.
RAY_LINE = re.compile(r"\((\w+) pid=|\braylet\b|\bINFO\b|\bWARNING\b|[Tt]oken authentication|ray\._private")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert COMMANDS[command][0] in " ".join(capsys.readouterr().out.split())


def test_the_program_exits_with_its_code_after_threads_atexit_handlers_and_buffered_output():
    """The `microal` program skips the interpreter's teardown, but nothing a command relies on."""
    program = (
        "import atexit, threading, time\n"
        "from microal.cli.main import exit_without_teardown\n"
        "atexit.register(lambda: print('atexit handler ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('thread finished'))).start()\n"
        "print('still in the buffer', end=' ')\n"  # a pipe: block-buffered, not yet written
        "exit_without_teardown(3)\n"
        "print('never')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout.split() == "still in the buffer thread finished atexit handler ran".split()


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"classes": ["a", "b"], "tiling": {"tile_sise": 3}}))
    (tmp_path / "imgs").mkdir()
    assert main(["ingest", str(tmp_path / "imgs"), "-c", str(config), "-w", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: tiling.tile_sise: unknown key" in err and "Traceback" not in err


def test_steps_one_by_one(ray_local, synth_dir, tmp_path, capsys):
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(quick_config_dict(synth_dir, epochs=1)))
    work = ["-w", str(tmp_path / "w")]
    assert main(["ingest", str(synth_dir / "manifest.csv"), "-c", str(config), *work]) == 0
    assert "catalog written" in capsys.readouterr().out
    assert main(["ingest", str(synth_dir / "manifest.csv"), "-c", str(config), *work]) == 0
    assert "catalog unchanged" in capsys.readouterr().out
    assert main(["tile", "-c", str(config), *work]) == 0
    assert main(["train", "-c", str(config), "--name", "cli", *work]) == 0
    assert main(["predict", "--name", "cli", "--domain", "B", *work]) == 0
    predictions = pd.read_csv(tmp_path / "w" / "predictions" / "cli" / "predictions.csv")
    assert set(predictions.domain) == {"B"}
    assert main(["evaluate", "-c", str(config), "--name", "cli", "--source-miou", "0.8", *work]) == 0
    out = capsys.readouterr().out
    assert "rdt" in out and "test" in out  # domain B is held out: reported as split "test"
    run = tmp_path / "w" / "runs" / "cli"
    held_out = pd.read_csv(run / "splits.csv").query("split == 'test'").image_id
    out = ["--out", str(tmp_path / "ens")]
    ensemble = ["--ensemble", str(run), str(run / "best_model.pt"), "--split", "test", "--tta", "flips"]
    assert main(["predict", *ensemble, *out, *work]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "ens" / "prediction_info.json").read_text())["tta"] == ["flips", "flips"]
    predictions = pd.read_csv(tmp_path / "ens" / "predictions.csv")
    assert set(predictions.image_id) == set(held_out) and (tmp_path / "ens" / predictions.uncertainty_file[0]).exists()
    assert main(["predict", "--name", "cli", "--images", "nope.tif", *work]) == 2
    assert "not in the catalog: ['nope.tif']" in capsys.readouterr().err
    assert main(["saliency", "--name", "cli", "--images", "b000", "--classes", "particles", *work]) == 0
    figure = tmp_path / "w" / "saliency" / "cli" / "b000.png"
    assert figure.stat().st_size > 10_000 and str(figure) in capsys.readouterr().out
    assert main(["saliency", "--name", "cli", "--images", "b000", "--classes", "austenite", *work]) == 2
    assert "'austenite'" in capsys.readouterr().err


def test_readme_demo_command(tmp_path):
    """`microal demo` end to end, as the README runs it (fewer epochs to keep the suite short)."""
    result = subprocess.run(
        [sys.executable, "-m", "microal.cli", "demo", "--out", str(tmp_path / "demo"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results by domain and split" in result.stdout
    # Quiet: microal's own lines (each epoch, without Ray's prefix), none of Ray's, which go to the log.
    terminal = result.stdout + result.stderr
    assert re.search(r"^epoch 1/1 \[", result.stdout, re.M)
    ray_lines = [line for line in terminal.splitlines() if RAY_LINE.search(line)]
    assert ray_lines == []
    log = (tmp_path / "demo" / "microal.log").read_text()
    assert "Started a local Ray instance" in log and "PooledWorker pid=" in log
    # The main job: one simulated round's batch for an expert, and the run's report.
    assert (tmp_path / "demo" / "work" / "al" / "demo" / "next_batch.png").stat().st_size > 10_000
    for report in ("demo.html", "al-demo.html"):
        assert str(tmp_path / "demo" / "work" / "reports" / report) in result.stdout
    per_domain = pd.read_csv(tmp_path / "demo" / "work" / "evaluation" / "demo" / "per_domain.csv")
    assert set(per_domain.domain) == {"A", "B"} and per_domain.miou.between(0, 1).all()
    assert "rdt" in per_domain
    assert (tmp_path / "demo" / "work" / "runs" / "demo" / "learning_curve.png").exists()


def test_a_failing_fit_shows_its_cause_in_one_line(ray_local, synth_dir, tmp_path, capsys):
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(quick_config_dict(synth_dir, epochs=1)))
    work = ["-w", str(tmp_path / "w")]
    assert main(["ingest", str(synth_dir / "manifest.csv"), "-c", str(config), *work]) == 0
    assert main(["tile", "-c", str(config), *work]) == 0
    damaged = sorted((tmp_path / "w" / "tiles" / "arrays").glob("*.image.npy"))
    for path in damaged:
        path.write_bytes(b"not an array")  # what a full disk or an interrupted copy leaves
    capsys.readouterr()
    assert main(["train", "-c", str(config), "--name", "broken", *work]) == 2
    err = capsys.readouterr().err
    assert "microal train: error: training 'broken' failed:" in err
    assert ".image.npy: damaged tile array" in err and "run `microal tile` again" in err
    assert "Traceback" not in err and not RAY_LINE.search(err)
