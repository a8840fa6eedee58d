"""Kill -9 at seeded moments, then ``--resume``: the run ends with the assignments of an
uninterrupted run, and no checkpoint is ever left unreadable.

Marked ``stress``: it runs once in ``pytest -q``, and ``.ci/run`` repeats the ``stress`` tests
several times (with the torchrun test of test_train_distributed.py) so that rare failures show.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.stress

# 300 digits, 3 epochs, tiny k: a few seconds per run on the 2-core CPU.
RUN = ["--subset", "300", "--epochs", "3", "--k", "8", "--batch-size", "32", "--pca-dim", "16",
       "--no-final-eval", "--no-plots", "--no-progress"]


def _command(out, *extra):
    return [sys.executable, "-m", "fastdc.train", *RUN, "--out", str(out), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_to_end(out, *extra):
    done = subprocess.run(_command(out, *extra), capture_output=True, text=True, timeout=300,
                          env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _kill_after(out, delay_s, *extra):
    """Start a run and SIGKILL its whole process group after ``delay_s`` seconds; returns True
    when the kill landed (False when the run had already finished)."""
    proc = subprocess.Popen(_command(out, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    try:
        proc.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    assert proc.returncode == 0, proc.stderr.read()
    return False


def _assignments(out):
    files = sorted((out / "assignments").glob("epoch_*.npy"))
    return [np.load(f) for f in files]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("stress") / "reference"
    start = time.monotonic()
    _run_to_end(out)
    return out, time.monotonic() - start


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_seeded_moments_then_resume_equals_an_uninterrupted_run(
    tmp_path, uninterrupted, seed
):
    reference, duration = uninterrupted
    rng = random.Random(seed)
    kills = 0
    # The reference's duration depends on the machine's load when it ran: when no kill of an
    # attempt lands (the run finished first), start again in a new folder with the moments
    # drawn from a window half as long.
    for attempt in range(6):
        out = tmp_path / f"killed_{attempt}"
        for _ in range(3):
            # Anywhere from interpreter start-up to the end of a full run; --resume every time,
            # as a requeued job does (it starts the run when there is no checkpoint yet).
            kills += _kill_after(out, rng.uniform(0.2, duration * 0.5**attempt), "--resume")
            if (out / "checkpoint.pt").is_file():
                state = torch.load(out / "checkpoint.pt", weights_only=False)
                assert state["format"] == "fastdc-deepcluster-1" and 0 <= state["epoch"] <= 3
        if kills:
            break
    assert kills >= 1, "no kill landed: the moments were all after the end of the run"
    _run_to_end(out, "--resume")
    got, want = _assignments(out), _assignments(reference)
    assert len(got) == len(want) == 3
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    final = torch.load(out / "checkpoint.pt", weights_only=False)
    ref = torch.load(reference / "checkpoint.pt", weights_only=False)
    for name, tensor in ref["model"].items():
        assert torch.equal(final["model"][name], tensor), name
