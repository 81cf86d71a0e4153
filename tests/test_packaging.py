"""requirements*.txt, environment.yml and Pipfile describe one environment: the same pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
