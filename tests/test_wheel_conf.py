"""A wheel install (not the editable checkout) carries conf/ and loads every profile and prompt from it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_PROMPTS = {"calibration", "personas", "judge_rationale"}  # data files beside the prompts

CHECK = """
import lab_ray, lab_ray.config as c
from lab_ray.prompts import load_prompt
assert lab_ray.__file__.startswith({site!r}), lab_ray.__file__
d = c.conf_dir()
assert d == __import__("pathlib").Path(lab_ray.__file__).parent / "_conf", d
for group in ("teacher", "sdg", "train"):
    for f in sorted((d / group).glob("*.yaml")):
        c.load_config([f"{{group}}={{f.stem}}"])
names = sorted(p.stem for p in (d / "prompts").glob("*.yaml") if p.stem not in {NOT_PROMPTS!r})
for n in names:
    load_prompt(n)
print(len(names), "prompts")
"""


def test_wheel_ships_conf_and_the_installed_package_finds_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "conf", src / "conf")
    shutil.copytree(REPO / "lab_ray", src / "lab_ray", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert (src / "lab_ray" / "_conf").is_symlink()
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, str(src),
                        "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lab_ray-*.whl")
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lab_ray/_conf/")}
    shipped = {f"lab_ray/_conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert packaged == shipped
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The installed copy, run from elsewhere: nothing of the checkout on its path.
    check = CHECK.format(site=str(site), NOT_PROMPTS=NOT_PROMPTS)
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(site), "LAB_RAY_CONF": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    n = len([p for p in (REPO / "conf" / "prompts").glob("*.yaml") if p.stem not in NOT_PROMPTS])
    assert int(r.stdout.split()[0]) == n > 0
