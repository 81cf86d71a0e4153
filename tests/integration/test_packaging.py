"""requirements*.txt, environment.yml and Pipfile describe one environment: the same pins; pyproject.toml
declares the same packages, and ``pip install .`` gives a ``faceattr`` command that works from any folder."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")


def _name(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path: Path) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirements file, following ``-r``."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            pins.update(requirement_pins(path.parent / line[2:].strip()))
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"{path}: {raw!r} is not pinned with =="
        pins[_name(name.strip())] = version.strip()
    return pins


def environment_pins(path: Path) -> tuple[dict[str, str], str | None]:
    """(pip name -> version, the conda ``python=`` version) of an environment.yml.

    Simple line parsing: ``- name==version`` and ``- -r file`` entries of the pip section,
    ``- python=X.Y`` among the conda dependencies.
    """
    pins: dict[str, str] = {}
    python = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("- "):
            continue
        item = line[2:].strip()
        if item.startswith("-r"):
            pins.update(requirement_pins(path.parent / item[2:].strip()))
        elif "==" in item:
            name, _, version = item.partition("==")
            pins[_name(name.strip())] = version.strip()
        elif item.startswith("python="):
            python = item.partition("=")[2].strip()
    return pins, python


def pipfile_pins(path: Path) -> tuple[dict[str, str], dict[str, str], str | None]:
    """(packages, dev-packages, python_version) of a Pipfile; versions without their ``==``."""
    data = tomllib.loads(path.read_text())

    def pins(section: str) -> dict[str, str]:
        out = {}
        for name, spec in data.get(section, {}).items():
            version = spec if isinstance(spec, str) else spec.get("version", "")
            assert version.startswith("==") and version[2:], f"{path}: {section}.{name} = {spec!r} is not pinned"
            out[_name(name)] = version[2:]
        return out

    return pins("packages"), pins("dev-packages"), data.get("requires", {}).get("python_version")


def mismatches(expected: dict[str, str], actual: dict[str, str], where: str) -> list[str]:
    """One line per package of ``expected`` that ``actual`` lacks or pins to another version."""
    return [f"{where}: {name} {actual.get(name, 'missing')} != {version}"
            for name, version in expected.items() if actual.get(name) != version]


def test_every_file_pins_the_same_versions():
    runtime = requirement_pins(ROOT / "requirements.txt")
    everything = requirement_pins(ROOT / "requirements-dev.txt")  # includes requirements.txt
    dev = {name: v for name, v in everything.items() if name not in runtime}
    assert runtime and dev
    env, env_python = environment_pins(ROOT / "environment.yml")
    packages, dev_packages, pip_python = pipfile_pins(ROOT / "Pipfile")
    problems = (mismatches(everything, env, "environment.yml") + mismatches(runtime, packages, "Pipfile [packages]")
                + mismatches(dev, dev_packages, "Pipfile [dev-packages]"))
    assert not problems, problems
    # Nothing pinned there that requirements*.txt leaves out.
    assert set(packages) | set(dev_packages) <= set(everything), sorted(set(packages) | set(dev_packages))
    assert set(env) <= set(everything), sorted(set(env) - set(everything))
    assert env_python == pip_python == "3.11"


def test_a_different_pin_is_found(tmp_path):
    (tmp_path / "requirements.txt").write_text("# runtime\nnumpy==2.4.6\nscikit_learn==1.9.1\n")
    (tmp_path / "Pipfile").write_text('[packages]\nnumpy = "==2.4.5"\nscikit-learn = "==1.9.1"\n'
                                      '[requires]\npython_version = "3.11"\n')
    (tmp_path / "environment.yml").write_text("dependencies:\n  - python=3.11\n  - pip:\n      - -r requirements.txt\n")
    runtime = requirement_pins(tmp_path / "requirements.txt")
    packages, _, _ = pipfile_pins(tmp_path / "Pipfile")
    env, python = environment_pins(tmp_path / "environment.yml")
    assert mismatches(runtime, packages, "Pipfile") == ["Pipfile: numpy 2.4.5 != 2.4.6"]
    assert mismatches(runtime, env, "environment.yml") == [] and python == "3.11"
    assert mismatches(runtime, {}, "x") == ["x: numpy missing != 2.4.6", "x: scikit-learn missing != 1.9.1"]


# ------------------------------------------------------------------------ the package


def test_pyproject_declares_every_pinned_requirement_and_the_pins_satisfy_it():
    """``pip install .`` asks for what requirements.txt pins, in ranges the pins fall in."""
    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared: dict[str, list] = {}
    for text in project["dependencies"]:
        req = requirements.Requirement(text)
        declared.setdefault(_name(req.name), []).append(req)
    pins = requirement_pins(ROOT / "requirements.txt")
    tensorflow = declared.pop("tensorflow", [])  # macOS has no tensorflow-cpu wheels
    assert [str(r.marker) for r in tensorflow] == ['sys_platform == "darwin"']
    assert sorted(declared) == sorted(pins)
    for name, version in pins.items():
        assert all(req.specifier.contains(version) for req in declared[name]), (name, version)
    assert project["scripts"] == {"faceattr": "faceattr.cli:main"}


@pytest.mark.slow
def test_an_installed_copy_runs_from_any_folder(tmp_path):
    """``pip install .`` into a fresh venv gives a ``faceattr`` command that finds the shipped
    config, models and example photo inside the installed package, from any folder.

    No network: the venv sees this environment's packages through a .pth file and the package is
    installed with ``--no-deps --no-build-isolation`` from a copy of the project (the build
    leaves build/ and *.egg-info behind it, so not in this checkout).
    """
    pytest.importorskip("setuptools", reason="the build needs setuptools in this environment")
    project = tmp_path / "project"
    for name in ("src", "conf", "saved_model", "examples"):
        shutil.copytree(ROOT / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__", ".previous", "*.egg-info"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, project / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site_packages / "this_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", str(project)], check=True, env=env, timeout=600)
    shutil.rmtree(project)  # the installed copy must not lean on the project folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import faceattr, faceattr.resources as r; "
                            "print(faceattr.__file__); print(r.EXAMPLE_PHOTO)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert Path(where[0]).is_relative_to(site_packages)
    photo = Path(where[1])
    assert photo.is_relative_to(site_packages) and photo.is_file()
    res = subprocess.run([str(venv / "bin" / "faceattr"), "run", "--img", str(photo), "--no-display"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "1 image: 1 face" in res.stdout.splitlines()
    (table,) = (elsewhere / "outputs" / "run").glob("*/*/predictions.csv")
    rows = table.read_text().splitlines()
    assert len(rows) == 2 and ",female,white," in rows[1]  # the shipped model's answer on the example
    help_text = subprocess.run([str(venv / "bin" / "faceattr"), "run", "--help"], cwd=elsewhere, env=env,
                               capture_output=True, text=True, check=True).stdout
    assert help_text.startswith("usage: faceattr run ") and "model: cnn, facenet, normal" in help_text
