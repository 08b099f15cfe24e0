"""Production code never reaches the lab: not by import, not by a command the image ships."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCTION = ["cluster_mgmt", "tasks", "flows", "blocks", "deployments"]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

# Runs in a fresh interpreter: any attempt to import `lab` (or a submodule) fails loudly.
BLOCKED_IMPORT = """
import importlib, pkgutil, sys

class NoLab:
    def find_spec(self, name, path=None, target=None):
        if name == "lab" or name.startswith("lab."):
            raise ImportError(f"production code imported {name}")

sys.meta_path.insert(0, NoLab())
for package in sys.argv[1].split(","):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
for target in sys.argv[2].split(","):
    module, _, attribute = target.partition(":")
    getattr(importlib.import_module(module), attribute)
print("imported", ",".join(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1])))
"""


def production_files() -> list[Path]:
    return [path for package in PRODUCTION for path in (REPO / package).rglob("*.py")]


def test_every_production_module_imports_without_the_lab():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, ",".join(PRODUCTION), ",".join(SCRIPTS.values())],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deployments.cli" in result.stdout and "flows." in result.stdout


def test_no_production_module_mentions_an_import_of_the_lab():
    """Also imports inside functions, which importing the module does not run."""
    offenders = []
    for path in production_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name == "lab" or name.startswith("lab.")
            ]
    assert not offenders


def test_the_image_ships_only_production_packages_and_their_commands():
    copied = re.findall(r"^COPY (\S+) \./\1$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert sorted(copied) == sorted(PRODUCTION)
    for command, target in SCRIPTS.items():
        assert target.split(".")[0] in PRODUCTION, f"{command} = {target} is not production"
    assert "cluster-mgmt" in SCRIPTS
    lab_scripts = tomllib.loads((REPO / "lab" / "pyproject.toml").read_text())["project"]
    assert {"cluster-mgmt-lab", "lab-rke"} <= set(lab_scripts["scripts"])
