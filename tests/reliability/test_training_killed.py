"""Training SIGKILLed in the middle of an epoch (a real kill, between two optimizer steps) resumes
from the last completed epoch and ends with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from wbc_edge.spec import CLASSES, MODALITIES
    from wbc_edge.train.config import TrainConfig
    from wbc_edge.train.cv import run_cv
    from wbc_edge.train.engine import CellArrays

    rng = np.random.default_rng(0)
    n = 30
    arrays = CellArrays(x=rng.integers(0, 256, size=(n, 12, 32, 32), dtype=np.uint8), labels=np.arange(n) % len(CLASSES),
                        cell_ids=[f"c{i:03d}" for i in range(n)], classes=CLASSES, modalities=MODALITIES,
                        fingerprint="random-0", source="memory")
    cfg = TrainConfig(method="mimo", backbone="shufflenet_v2_x0_5", img_size=32, epochs=2, batch_size=4, folds=3,
                      fold_subset=[0], threads=1, eval_batch_size=64, rho=0.3, light_dropout=0.2)
    run_cv(None, cfg, sys.argv[1] + "/whole", arrays=arrays)

    epochs_done, steps_after = [0], [0]
    def kill_mid_epoch(optimizer, args, kwargs):
        if epochs_done[0] == 1:
            steps_after[0] += 1
            if steps_after[0] == 2:  # inside epoch 2, weights changed since last.pt was written
                print("killing", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    register_optimizer_step_post_hook(kill_mid_epoch)
    def note_epoch(info):
        epochs_done[0] = info["epoch"]
    run_cv(None, cfg, sys.argv[1] + "/killed", arrays=arrays, callbacks=[note_epoch])
    print("not killed", flush=True)
""")


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL and "killing" in proc.stdout, proc.stderr[-2000:]
    killed_dir = tmp_path / "killed" / "folds" / "fold0" / "mimo"
    state = torch.load(killed_dir / "last.pt", weights_only=True)  # intact, loadable without unpickling code
    assert state["epoch"] == 1 and not (killed_dir / "model.pt").exists()

    # resume in this process with the same data and settings
    import numpy as np

    from wbc_edge.spec import CLASSES, MODALITIES
    from wbc_edge.train.config import TrainConfig
    from wbc_edge.train.cv import run_cv
    from wbc_edge.train.engine import CellArrays

    rng = np.random.default_rng(0)
    n = 30
    arrays = CellArrays(x=rng.integers(0, 256, size=(n, 12, 32, 32), dtype=np.uint8), labels=np.arange(n) % len(CLASSES),
                        cell_ids=[f"c{i:03d}" for i in range(n)], classes=CLASSES, modalities=MODALITIES,
                        fingerprint="random-0", source="memory")
    cfg = TrainConfig(method="mimo", backbone="shufflenet_v2_x0_5", img_size=32, epochs=2, batch_size=4, folds=3,
                      fold_subset=[0], threads=1, eval_batch_size=64, rho=0.3, light_dropout=0.2)
    threads = torch.get_num_threads()
    try:
        run_cv(None, cfg, tmp_path / "killed", arrays=arrays, resume=True)
    finally:
        torch.set_num_threads(threads)
    whole = torch.load(tmp_path / "whole" / "folds" / "fold0" / "mimo" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(killed_dir / "model.pt", weights_only=True)["state_dict"]
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
