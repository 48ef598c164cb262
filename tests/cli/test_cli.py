"""The `microal` command line: help, clear errors, each step, and the README's demo."""

import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import quick_config_dict

from microal.cli.main import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert COMMANDS[command][0] in " ".join(capsys.readouterr().out.split())


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
    assert main(["predict", "--ensemble", str(run), str(run / "best_model.pt"), "--split", "test", *out, *work]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "ens" / "predictions.csv")
    assert set(predictions.image_id) == set(held_out) and (tmp_path / "ens" / predictions.uncertainty_file[0]).exists()
    assert main(["predict", "--name", "cli", "--images", "nope.tif", *work]) == 2
    assert "not in the catalog: ['nope.tif']" in capsys.readouterr().err


def test_readme_demo_command(tmp_path):
    """`microal demo` end to end, as the README runs it (fewer epochs to keep the suite short)."""
    result = subprocess.run(
        [sys.executable, "-m", "microal.cli", "demo", "--out", str(tmp_path / "demo"), "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results by domain and split" in result.stdout
    per_domain = pd.read_csv(tmp_path / "demo" / "work" / "evaluation" / "demo" / "per_domain.csv")
    assert set(per_domain.domain) == {"A", "B"} and per_domain.miou.between(0, 1).all()
    assert "rdt" in per_domain
    assert (tmp_path / "demo" / "work" / "runs" / "demo" / "learning_curve.png").exists()
