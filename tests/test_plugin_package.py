"""The third-party plugin in plugins/miprun-cka, installed for real (non-editable, from its own
pyproject) into a scratch directory, is found through the ``miprun`` entry-point group and passes
its own tests — the check ``tox -e plugins`` makes, inside the README's test command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

PLUGIN = REPO / "plugins" / "miprun-cka"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment variables under which Python sees the plugin installed into a scratch target."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                           str(PLUGIN)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "MIPRUN_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_installed_plugin_is_listed_with_its_package(plugin_env):
    done = subprocess.run([sys.executable, "-m", "miprun.cli.main", "plugins", "--json"], env=plugin_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import json

    plugins = {p["plugin"]: p for p in json.loads(done.stdout)}
    assert plugins["cka"]["package"] == "miprun-cka" and plugins["cka"]["provides"] == {"scorer": ["linear-cka"]}


def test_installed_plugin_passes_its_own_tests(plugin_env):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
                          env=plugin_env, capture_output=True, text=True, timeout=900, cwd=PLUGIN)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
