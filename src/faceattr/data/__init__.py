"""UTKFace data: safe archive extraction (``archive``), indexing, deduplication, the split
and rebalancing (``utkface``), the tf.data input pipeline (``pipeline``) and dataset
statistics (``stats``)."""
