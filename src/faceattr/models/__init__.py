"""Models: the family registry (``families``), the building blocks it uses (the FaceNet
backbone and transfer top, the from-scratch CNN, heads, layers), model folders (``info``,
``io``), the export and ensembles."""
