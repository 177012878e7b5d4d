"""The runtime ships alone: what the Lambda layer and the stream image hold is ``alfred_jobs`` and
its dependencies, never the tooling (``alfred_tools``) or the tooling's dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLING_ONLY = {"moto", "httpx", "yaml", "alfred_tools", "celery", "playwright"}

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('tooling-only module imported by the runtime: ' + name)
        return None
sys.meta_path.insert(0, Block())
import alfred_jobs.entry.worker, alfred_jobs.entry.http.jobs_api, alfred_jobs.entry.http.stream_api
import alfred_jobs.entry.wiring, alfred_jobs.agents.demo, alfred_jobs.agents.bedrock
sys.path.insert(0, 'functions/submit'); import app as submit_app
print('ok')
"""


def test_the_runtime_imports_nothing_of_the_tooling() -> None:
    code = BLOCKER.format(blocked=TOOLING_ONLY)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_pip_install_without_extras_is_the_runtime() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {d.split(">")[0].split("[")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert not names & {"moto", "httpx", "pyyaml", "celery", "playwright"}, names
    local = " ".join(project["optional-dependencies"]["local"])
    for tool_dep in ("moto", "httpx", "pyyaml"):
        assert tool_dep in local


def test_the_layer_and_the_image_copy_the_runtime_package_only() -> None:
    makefile = (ROOT / "infra" / "layer" / "Makefile").read_text(encoding="utf-8")
    assert 'cp -R "$(ROOT)/lib/alfred_jobs"' in makefile and "alfred_tools" not in makefile
    dockerfile = (ROOT / "functions" / "stream" / "Dockerfile").read_text(encoding="utf-8")
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY lib")]
    assert copies == ["COPY lib/alfred_jobs ./lib/alfred_jobs"], copies


LAZY = """
import ssl, sys
made = []
real = ssl.create_default_context
ssl.create_default_context = lambda *a, **kw: made.append(1) or real(*a, **kw)
sys.path.insert(0, 'functions/submit'); import app as submit_app
print(sorted(m for m in ('alfred_jobs.adapters.push', 'alfred_jobs.adapters.push_http') if m in sys.modules), len(made))
"""


def test_the_submit_function_loads_no_web_push_sender_and_no_tls_context_at_import() -> None:
    # issue 28: the submit handler's import (Lambda's init, the cold start a user waits for) is
    # held to 1.3x its dependencies'; the Web Push adapter and a CA bundle are for the first send
    out = subprocess.run([sys.executable, "-c", LAZY], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] 0"
