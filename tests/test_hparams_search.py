"""``hparams_search=...``: an Optuna search run as a Hydra sweep, on smoke-size data.

The command line goes through the CLI's own entry point in this process (conftest's ``cli``),
on the session's fake faces whose FaceNet features ``facenet_run`` already cached.
"""

from __future__ import annotations

import pandas as pd
import yaml

from conftest import cli, smoke


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
    # The sweeper minimised what each trial returned: its best validation loss.
    assert abs(result["best_value"] - summary["val_loss"].min()) < 1e-4  # the summary rounds to 6 digits
    assert (sweep / "sweep_comparison.png").stat().st_size > 1000
    assert all((sweep / str(i) / "model" / "model_info.json").is_file() for i in (0, 1))
