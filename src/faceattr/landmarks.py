"""The five facial landmarks, in the one order every detector gives them, every chip template
places them and ``model_info.json`` records them (a model's ``chip_template.points``)."""

from __future__ import annotations

#: Order of the five landmarks (image left/right, i.e. "left_eye" is the one further left).
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
