"""The base install has no hl7apy / fhir.resources: the runtime still records identity, and the LIS
commands say which extra is missing in one line. torch is never imported."""
from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys\nfor m in ('torch', 'hl7apy', 'fhir', 'fhir.resources', 'hl7'): sys.modules[m] = None\n"


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=60)


def test_lis_imports_without_torch_or_extras():
    r = run_py("import wbc_edge.lis, wbc_edge.lis.outbox, wbc_edge.lis.mllp, wbc_edge.cli.lis, wbc_edge.cli.run\n"
               "from wbc_edge.lis import SampleIdentity, Outbox\n"
               "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]\n"
               "print('ok')\n")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_building_a_message_without_the_extra_names_it(tmp_path):
    code = ("from wbc_edge.lis.identity import SampleIdentity\n"
            "from wbc_edge.lis.result import SampleResult, ClassShare\n"
            "from wbc_edge.lis import Outbox, queue_result\n"
            "from wbc_edge.errors import WbcError\n"
            "r = SampleResult(SampleIdentity('S1'), [ClassShare('neutrophil', 100.0, 5)], 5, False)\n"
            f"box = Outbox({str(tmp_path / 'o.sqlite')!r})\n"
            "try:\n    queue_result(box, r)\nexcept WbcError as e:\n    print(e)\n"
            "print(box.counts()['pending'])\n")
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["HL7 v2 messages need the lis extra: pip install 'wbc-edge[lis]'", "0"]
