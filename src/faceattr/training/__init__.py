"""Training (floor 6, above evaluation): the ``train`` command's library side, above the
families it trains.

- ``command``: ``train_run`` (prepare data, a trainer from the family registry, fit, save,
  optional evaluation and promotion) and ``make_trainer`` (``train.init_from`` checks).
- ``promote``: ship a model folder into ``saved_model/`` (checked to load as ``run`` loads it).
- ``state``: where a run folder stands (finished or not), readable without TensorFlow.

The Keras fit the families' trainers call (callbacks, logs, backups, resume) is the engine
below them: ``models.engine``.

Submodules are imported on use; importing this package is cheap.
"""
