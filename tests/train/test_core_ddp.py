"""DistributedDataParallel on CPU: two gloo processes via torch.distributed.run end with equal weights."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    from wbc_edge.spec import CLASSES, MODALITIES
    from wbc_edge.train.config import TrainConfig
    from wbc_edge.train.distributed import init_distributed, shutdown
    from wbc_edge.train.engine import CellArrays, fit, method_seed, plan_method
    from wbc_edge.train.models import create_model

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    n = 32
    arrays = CellArrays(x=rng.integers(0, 256, (n, 12, 32, 32), dtype=np.uint8), labels=np.arange(n) % 5,
                        cell_ids=[f"c{i}" for i in range(n)], classes=CLASSES, modalities=MODALITIES)
    cfg = TrainConfig(method="mimo", backbone="shufflenet_v2_x0_5", img_size=32, epochs=1, batch_size=4,
                      batch_repetition=1, folds=2, num_workers=0)
    ctx = init_distributed("cpu")
    train_idx, val_idx = np.arange(24), np.arange(24, 32)
    plan = plan_method(cfg, "mimo", arrays, train_idx)
    torch.manual_seed(method_seed(cfg, "mimo", 0))  # the initial weights fit() starts from
    initial = create_model(plan.spec).state_dict()

    def save_rank_weights(info):
        state = {k: v.detach().clone() for k, v in info["model"].state_dict().items()}
        torch.save(state, out / f"rank{info['rank']}.pt")

    fit(cfg, plan, arrays.labels, train_idx, val_idx, out / "mimo", ctx=ctx, callbacks=[save_rank_weights])
    if ctx.is_main:
        torch.save(initial, out / "initial.pt")
    shutdown(ctx)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = torch.load(tmp_path / "initial.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    conv = "net.conv1.0.weight"
    assert not torch.equal(a[conv], initial[conv])  # it trained
    assert (tmp_path / "mimo" / "model.pt").exists() and (tmp_path / "mimo" / "last.pt").exists()
