"""Evaluation (floor 5, above inference): metrics, reports, plots, a fairness breakdown and sweep
comparison.

- ``metrics``: numbers (age MAE/RMSE/R², accuracies, macro F1) and per-task report tables.
- ``fairness``: the same numbers for every race x gender group, so failures are visible.
- ``plots``: confusion heatmaps, training curves, age plots, a grid of test faces (written
  by ``faceattr.figures.save_figure``).
- ``report``: ``write_evaluation`` writes all of the above for one test split.
- ``model_dir``: the ``evaluate`` command; a saved model scored on the split saved with it
  (``evaluate``, ``train --eval``).
- ``served``: the model as ``run`` serves it, scoring a split (``models.predictions`` is the
  form every scorer returns).
- ``sweep``: one table and one plot comparing the runs of a sweep (``compare`` command and a
  Hydra callback that runs when a multirun ends).
- ``saved_predictions``: the ``predictions.csv`` an ``evaluate`` run wrote, read back per source.
- ``ensemble_weights``: per-task ensemble weights chosen from the members' saved validation
  predictions (``weigh`` command).

Submodules are imported on use; importing this package is cheap.
"""
