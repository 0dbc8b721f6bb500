"""Training SIGKILLed in the middle of an epoch (a real kill, between two optimizer steps) resumes
from the last completed epoch and ends with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from support.tiny_training import tiny_mimo_setup
    from wbc_edge.train.cv import run_cv

    arrays, cfg = tiny_mimo_setup()
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
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path), str(Path(__file__).resolve().parents[1])], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL and "killing" in proc.stdout, proc.stderr[-2000:]
    killed_dir = tmp_path / "killed" / "folds" / "fold0" / "mimo"
    state = torch.load(killed_dir / "last.pt", weights_only=True)  # intact, loadable without unpickling code
    assert state["epoch"] == 1 and not (killed_dir / "model.pt").exists()

    # resume in this process with the same data and settings
    from support.tiny_training import tiny_mimo_setup
    from wbc_edge.train.cv import run_cv

    arrays, cfg = tiny_mimo_setup()
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
