"""Packaging: the licence, the metadata, one version, and the recipes inside the package (and the wheel)."""
import importlib.metadata
import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fewseg
from fewseg.recipes import recipe_dir, recipe_names

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_licence_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("Copyright the fewseg authors\n")
    for line in ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE",
                 "END OF TERMS AND CONDITIONS", "APPENDIX: How to apply the Apache License to your work"):
        assert line in text
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"][0]
    assert "torch>=2.3" in project["dependencies"]


def test_the_version_has_one_source():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fewseg._version.__version__"}
    assert importlib.metadata.version("fewseg") == fewseg.__version__


def test_the_recipes_are_package_data():
    assert "configs/*.yaml" in PYPROJECT["tool"]["setuptools"]["package-data"]["fewseg"]
    shipped = sorted(p.name for p in importlib.resources.files("fewseg").joinpath("configs").iterdir()
                     if p.name.endswith(".yaml"))
    assert shipped == [f"{n}.yaml" for n in recipe_names()] and "synthetic_maml.yaml" in shipped
    clone_link = ROOT / "configs"  # a clone keeps configs/ as a link to the same folder
    if clone_link.exists():
        assert clone_link.resolve() == recipe_dir().resolve()


def test_the_wheel_holds_the_licence_and_the_recipes(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info left in the checkout
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "LICENSE", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("fewseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"fewseg-{fewseg.__version__}.dist-info/licenses/LICENSE" in names
    assert {f"fewseg/configs/{n}.yaml" for n in recipe_names()} <= set(names)
    metadata = zipfile.ZipFile(wheel).read(f"fewseg-{fewseg.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
