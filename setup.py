"""Build hook: an installed copy carries the checkout's conf/, saved_model/ and examples/.

Everything else about the package is in pyproject.toml. The wheel gets the three folders as
``faceattr/shipped/{conf,saved_model,examples}`` (faceattr.resources finds them there); an
editable install (``pip install -e .``) reads them from the checkout and copies nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED_FOLDERS = ("conf", "saved_model", "examples")  # faceattr.resources.SHIPPED_FOLDERS
# Never shipped: the previous models `promote` keeps, caches.
SKIPPED = shutil.ignore_patterns(".previous", "__pycache__", "*.pyc", ".*")


class BuildWithShippedFiles(build_py):
    """build_py, then the shipped folders copied into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "faceattr" / "shipped"
        for name in SHIPPED_FOLDERS:
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(ROOT / name, target / name, ignore=SKIPPED)


setup(cmdclass={"build_py": BuildWithShippedFiles})
