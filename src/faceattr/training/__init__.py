"""Training: the ``train`` command and the parts every model family's trainer shares.

- ``command``: ``train_command`` (prepare data, a trainer from the family registry, fit, save,
  optional evaluation and promotion) and ``make_trainer`` (``train.init_from`` checks).
- ``loop``: ``fit_model`` with the standard callbacks, throughput and learning-rate logs.
- ``backup``: atomic per-epoch backups a stopped run resumes from.
- ``state``: where a run folder stands (finished or not), readable without TensorFlow.

Submodules are imported on use; importing this package is cheap.
"""
