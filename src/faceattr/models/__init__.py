"""Models (floor 3, above data): the family registry (``families``), the building blocks it
uses (the FaceNet backbone and transfer top, the from-scratch CNN, heads, layers), the training
engine the families call (``engine``: fit loop and backups), the records every trainer's
``predict`` returns (``predictions``), model folders (``info``, ``io``), the export and
ensembles."""
