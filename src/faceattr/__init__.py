"""faceattr: age, gender and race estimation from faces (UTKFace, FaceNet transfer and a CNN)."""

__version__ = "0.1.0"
