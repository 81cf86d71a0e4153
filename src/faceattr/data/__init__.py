"""Data (floor 2, above the base modules and ``config``): safe archive extraction (``archive``),
indexing, deduplication, the split and rebalancing (``utkface``), labelled photo folders
(``labelled``, ``labels_csv``), the data step every command shares (``prepare``), training
targets (``targets``), the tf.data input pipeline (``pipeline``) and dataset statistics
(``stats``).

Data imports no higher floor: photos that must be put onto the chip template go to the
``FaceAligner`` the caller passes to ``prepare.prepare_dataset`` (``inference.chips``).
"""
