"""The native core's persistent thread pool from Python: a forked child, interpreter exit."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from autoweld import native


def _knn_in_child(queue: multiprocessing.Queue) -> None:
    rng = np.random.default_rng(5)
    bank = rng.standard_normal((300, 24)).astype(np.float32)
    queries = rng.standard_normal((40, 24)).astype(np.float32)
    _, indices = native.knn(queries, bank, 3, threads=2)
    reference = np.argsort(((queries[:, None, :] - bank[None]) ** 2).sum(-1), axis=1)[:, :3]
    # The coreset's selection loop runs as a team whose members must all run at once: with a
    # stale pool (the parent's workers, absent in the child) it would wait for them forever.
    features = rng.standard_normal((20000, 8)).astype(np.float32)
    picked = native.coreset(features, 5, projection_dim=8, threads=2)
    queue.put(bool((indices == reference).all()) and len(set(picked.tolist())) == 5)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_pool_works_in_forked_child() -> None:
    # Start the parent's pool first, so the child inherits a pool whose threads it lacks.
    rng = np.random.default_rng(4)
    bank = rng.standard_normal((200, 16)).astype(np.float32)
    native.knn(bank[:20], bank, 2, threads=2)
    native.coreset(rng.standard_normal((20000, 8)).astype(np.float32), 3, threads=2)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_knn_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("kNN in a forked child hung (stale thread pool)")
    assert child.exitcode == 0
    assert queue.get(timeout=5) is True


def test_interpreter_exits_cleanly_with_pool_started() -> None:
    code = (
        "import numpy as np\n"
        "from autoweld import native\n"
        "x = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)\n"
        "native.knn(x, x, 2, threads=2)\n"
        "native.clahe(np.zeros((512, 512), np.uint8))\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


_SPIN_CHILD = """
import numpy as np
from autoweld import native
rng = np.random.default_rng(5)
bank = rng.standard_normal((3000, 24)).astype(np.float32)
queries = rng.standard_normal((400, 24)).astype(np.float32)
_, indices = native.knn(queries, bank, 3, threads=2)
reference = np.argsort(((queries[:, None, :] - bank[None]) ** 2).sum(-1), axis=1)[:, :3]
picked = native.coreset(rng.standard_normal((20000, 8)).astype(np.float32), 5, threads=2)
print(bool((indices == reference).all()) and len(set(picked.tolist())) == 5)
"""


@pytest.mark.parametrize("spin", ["0", "50", "100000", "not-a-number", "-3"])
def test_every_spin_setting_hands_work_over_correctly(spin: str) -> None:
    """AUTOWELD_POOL_SPIN_US: 0 sleeps at once (the condition-variable path alone), a number
    busy-waits that long first, anything else keeps the default; loops and teams finish with
    the right answer under each."""
    env = {**os.environ, "AUTOWELD_POOL_SPIN_US": spin}
    done = subprocess.run(
        [sys.executable, "-c", _SPIN_CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
