import pandas as pd
import torch

from microal.inference.compare import compare_runs
from microal.models.factory import build_model
from microal.models.model_file import save_model_file


def test_compare_scores_each_run_on_the_same_images(tiled, tmp_path):
    ws, catalog, config = tiled
    for seed, run in enumerate(["first", "second"]):
        torch.manual_seed(seed)
        ws.run(run).mkdir(parents=True, exist_ok=True)
        save_model_file(ws.run(run) / "best_model.pt", build_model(config.model, 3), config, 1, {}, [])
    table = compare_runs(ws, catalog, config, ["first", "second"], tmp_path / "cmp", figure_domain="B", figure_images=2)
    assert set(table.run) == {"first", "second"}
    assert table.groupby("run").images.sum().eq(len(catalog)).all()
    assert table.miou.between(0, 1).all()
    assert (
        not table[table.run == "first"]
        .miou.reset_index(drop=True)
        .equals(table[table.run == "second"].miou.reset_index(drop=True))
    )
    assert pd.read_csv(tmp_path / "cmp" / "compare.csv").shape[0] == len(table)
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 20_000
