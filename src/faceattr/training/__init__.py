"""Training: the ``train`` command's library side and the parts every model family's trainer shares.

- ``command``: ``train_run`` (prepare data, a trainer from the family registry, fit, save,
  optional evaluation and promotion) and ``make_trainer`` (``train.init_from`` checks).
- ``promote``: ship a model folder into ``saved_model/`` (checked to load as ``run`` loads it).
- ``loop``: ``fit_model`` with the standard callbacks, throughput and learning-rate logs.
- ``backup``: atomic per-epoch backups a stopped run resumes from.
- ``state``: where a run folder stands (finished or not), readable without TensorFlow.

Submodules are imported on use; importing this package is cheap.
"""
