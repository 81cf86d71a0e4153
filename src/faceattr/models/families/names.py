"""The registry's table, plain data: each family's ``model.name`` and the module defining it.

Read by ``faceattr.config`` (``model.name`` choices), the CLI (``--model-type``) and
``models.info`` (``model_type``) without importing any family; ``models.families.family(name)``
imports the module when the family itself is needed.
"""

from __future__ import annotations

from typing import Any

#: ``model.name`` (and ``model_info.json``'s ``model_type``) -> the module holding its ``FAMILY``.
FAMILY_MODULES: dict[str, str] = {
    "facenet": "faceattr.models.families.facenet",
    "normal": "faceattr.models.families.cnn",
}
#: The families this package ships, in a stable order (config groups, CLI choices).
FAMILIES: tuple[str, ...] = tuple(FAMILY_MODULES)


def family_names() -> tuple[str, ...]:
    """Every family the registry knows now, the shipped ones first."""
    return tuple(FAMILY_MODULES)


def is_family(name: Any) -> bool:
    """Whether ``name`` is a family's name."""
    return isinstance(name, str) and name in FAMILY_MODULES
