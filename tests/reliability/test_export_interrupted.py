"""An export interrupted while the bundle is being written leaves the good bundle that was there
byte-identical and openable: in-process (an exception out of the write) and a real SIGKILL of the
exporting process at the worst moment (temporary file written, not yet renamed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import wbc_edge.bundle as bundle_module
from wbc_edge.bundle import Bundle
from wbc_edge.errors import BundleError

torch = pytest.importorskip("torch")

EXPORT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import wbc_edge.bundle as bundle_module
    from wbc_edge.export.pipeline import ExportOptions, ExportSource, export_bundle
    from wbc_edge.spec import spec_for
    from wbc_edge.train.models import create_model

    class KillAtFsync:  # os, except that fsync (of the bundle's temporary file) kills this process
        def __getattr__(self, name):
            return getattr(os, name)
        def fsync(self, fd):
            os.kill(os.getpid(), signal.SIGKILL)

    spec = spec_for("single", ("color1",), backbone="shufflenet_v2_x0_5", input_size=32)
    for seed in (1, 2):  # a good export, then another model's export killed while writing over it
        torch.manual_seed(seed)
        source = ExportSource(model=create_model(spec).eval(), spec=spec, checkpoint=Path(f"seed{seed}"))
        export_bundle(source, ExportOptions(out=Path(sys.argv[1])), emit=print)
        print("exported", flush=True)
        bundle_module.os = KillAtFsync()
""")


@pytest.mark.slow
def test_export_killed_while_writing_keeps_the_good_bundle(tmp_path, monkeypatch):
    out = tmp_path / "model.wbc"
    script = tmp_path / "export_driver.py"
    script.write_text(EXPORT)
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert proc.stdout.count("exported") == 1 and "bundle: starting" in proc.stdout.split("exported")[1]
    good = Bundle.open(out)  # opens, checksums verified: the first export's bundle, untouched
    assert good.manifest["meta"]["source_checkpoint"] == "seed1"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.wbc.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the killed write, never renamed over it
    good_bytes = out.read_bytes()

    # in-process: an exception (Ctrl-C) out of the same write also leaves the bundle, and cleans up its own file
    from wbc_edge.export.pipeline import ExportOptions, ExportSource, export_bundle
    from wbc_edge.spec import spec_for
    from wbc_edge.train.models import create_model

    class InterruptAtFsync:
        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            raise KeyboardInterrupt("interrupted while writing the bundle")

    spec = spec_for("single", ("color1",), backbone="shufflenet_v2_x0_5", input_size=32)
    torch.manual_seed(3)
    source = ExportSource(model=create_model(spec).eval(), spec=spec, checkpoint=Path("seed3"))
    with monkeypatch.context() as m:
        m.setattr(bundle_module, "os", InterruptAtFsync())
        with pytest.raises(KeyboardInterrupt):
            export_bundle(source, ExportOptions(out=out), emit=lambda line: None)
    assert out.read_bytes() == good_bytes
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".model.wbc.")] == leftovers
    # the leftover does not get in the way of the next good write
    bundle_module.write_bundle(out, spec, {"model.fp32.onnx": good.model_bytes("fp32")}, {"source_checkpoint": "rewrite"})
    assert Bundle.open(out).manifest["meta"]["source_checkpoint"] == "rewrite"


def test_atomic_writer_failing_mid_write_keeps_old_bytes(tmp_path, monkeypatch):
    """The writer every artefact goes through, with a disk that fills up after a few bytes."""
    target = tmp_path / "artefact.json"
    target.write_bytes(b'{"old": true}')

    class FullDiskOs:
        def __getattr__(self, name):
            return getattr(os, name)

        def fdopen(self, fd, mode):
            f = os.fdopen(fd, mode)
            real_write = f.write

            def write(data):
                real_write(data[:3])
                raise OSError(28, "No space left on device")
            f.write = write
            return f

    monkeypatch.setattr(bundle_module, "os", FullDiskOs())
    with pytest.raises(OSError, match="No space"):
        bundle_module.atomic_write_text(target, '{"new": true, "padding": "' + "x" * 1000 + '"}')
    assert target.read_bytes() == b'{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact.json"]
