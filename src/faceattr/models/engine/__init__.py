"""The training engine the model families call: below the families, above nothing but data and config.

- ``loop``: ``fit_model`` (compile and fit with the standard callbacks, throughput and
  learning-rate logs), ``join_histories`` (a continued model's epoch log), ``search_objective``.
- ``backup``: atomic per-epoch backups a stopped run resumes from (``AtomicBackup``,
  ``has_backup``, ``check_resumable``), and Ctrl-C between batches (``SafeInterrupt``).

Both import Keras at module level; the families import them inside their trainers' methods,
so finding a family stays free of TensorFlow.
"""
