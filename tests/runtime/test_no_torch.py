"""The runtime and wbc-run never import torch (not even indirectly)."""
from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys; sys.modules['torch'] = None\n"


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=60)


def test_runtime_modules_import_without_torch():
    r = run_py(
        "import wbc_edge.runtime as rt\n"
        "from wbc_edge.runtime import Analyzer, CellResult, RunSummary, open_backend, open_source\n"
        "import wbc_edge.runtime.report, wbc_edge.runtime.display, wbc_edge.runtime.stats, wbc_edge.runtime.quantify\n"
        "import wbc_edge.runtime.backends.onnxruntime, wbc_edge.cli.run\n"
        "assert sys.modules.get('torch') is None\n"
        "assert not [m for m in sys.modules if m.startswith('torch.')], 'a torch submodule was loaded'\n"
        "print('ok')\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_wbc_run_help_without_torch():
    r = run_py("from wbc_edge.cli.run import main\nsys.exit(main(['--help']))\n")
    assert r.returncode == 0, r.stderr
    assert "synthetic://" in r.stdout and "--max-cells" in r.stdout and "v4l2:///dev/video0" in r.stdout
