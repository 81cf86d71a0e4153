"""``hparams_search=...``: an Optuna search run as a Hydra sweep, on smoke-size data.

The command line goes through the CLI's own entry point in this process (conftest's ``cli``),
on the session's fake faces whose FaceNet features ``facenet_run`` already cached.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import cli, smoke
from faceattr.models.engine.loop import search_objective


@pytest.mark.slow
def test_facenet_heads_search_runs_trials_and_reports_the_best(tmp_path, fake_data, facenet_cache):
    sweep = tmp_path / "sweep"
    code = cli("train", "hparams_search=facenet_heads", *smoke(fake_data, facenet_cache), "hydra.sweeper.n_trials=2",
               "train.epochs=1", f"hydra.sweep.dir={sweep}")
    assert code == 0
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna"
    assert set(result["best_params"]) == {"train.learning_rate", "model.heads.dropout", "model.heads.hidden_units",
                                          "model.heads.loss_weights.age"}
    assert 1e-4 <= result["best_params"]["train.learning_rate"] <= 3e-3
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(summary) == 2 and summary["train.learning_rate"].nunique() == 2  # two sampled trials
    # The sweeper minimised what each trial returned: its validation loss at fixed loss weights.
    assert abs(result["best_value"] - summary["objective"].min()) < 1e-4  # the summary rounds to 6 digits
    assert (sweep / "sweep_comparison.png").stat().st_size > 1000
    assert all((sweep / str(i) / "model" / "model_info.json").is_file() for i in (0, 1))


def test_the_objective_weighs_the_heads_alike_whatever_a_trials_loss_weights():
    heads = {"val_age_loss": [100.0, 80.0], "val_gender_loss": [0.7, 0.6], "val_race_loss": [1.5, 1.7]}
    light_age = pd.DataFrame({**heads, "val_loss": [0.03 * 100 + 2.2, 0.03 * 80 + 2.3]})
    heavy_age = pd.DataFrame({**heads, "val_loss": [0.3 * 100 + 2.2, 0.3 * 80 + 2.3]})
    # Age 0.1, gender 1, race 1 (the schema's defaults): epoch 2 is best at 0.1 * 80 + 0.6 + 1.7.
    assert search_objective(light_age) == search_objective(heavy_age) == pytest.approx(10.3)
    # A family without per-head losses in its history is judged on its own val_loss.
    assert search_objective(pd.DataFrame({"val_loss": [3.0, 2.5]})) == 2.5
