"""The loop on a CUDA GPU: the same numbers as on the CPU, the data moved once, and at
most one host sync per chunk of history. Skipped where torch sees no GPU."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from support import REPO, make_config, train_history, train_setup

from runner.run import build

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: torch sees none here"),
]


def test_cuda_matches_the_cpu() -> None:
    cpu, _ = train_history("experiment=seed_002", "optimizer=sgd")
    gpu, s = train_history("experiment=seed_002", "optimizer=sgd", "device=cuda")
    assert s.x.device.type == "cuda" and s.model.by_name["a"][0].device.type == "cuda"
    # The GPU may fuse a multiply and an add: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(gpu.to_numpy(), cpu.to_numpy(), rtol=2e-5, atol=1e-7)


def test_auto_picks_the_gpu() -> None:
    s = build([make_config("device=auto")], None)
    assert s.x.device.type == s.y.device.type == s.model.by_name["a"][0].device.type == "cuda"


def test_one_host_sync_per_chunk_at_most() -> None:
    conf = make_config("device=cuda", "data=synthetic", "data.n=100000", "epochs=3000",
                       "chunk=1000", "optimizer=sgd")  # fmt: skip
    s = build([conf], None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history, _ = train_setup(s, conf)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    chunks = len(history) // conf.chunk
    assert chunks == 3 and len(history) == 3000
    assert len(syncs) <= chunks, [str(w.message)[:120] for w in syncs]


def test_a_batch_on_the_gpu_syncs_once_per_chunk_for_the_whole_group() -> None:
    from runner.loop import Member, train

    confs = [make_config("device=cuda", "data=synthetic", "data.n=100000", "epochs=3000",
                         "chunk=1000", "optimizer=sgd", f"lr={lr}")
             for lr in (0.01, 0.05, 0.1, 0.2)]  # fmt: skip
    s = build(confs, None)
    histories: list[list] = [[] for _ in confs]
    members = [Member(s.optimizers[j], 3000, histories[j].append) for j in range(len(confs))]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcomes = train(s.model, s.loss_fn, members, s.x, s.y, chunk=1000)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert [o.epochs for o in outcomes] == [3000] * 4
    assert all(len(h) == 3 for h in histories)  # three chunks each
    assert len(syncs) <= 3, [str(w.message)[:120] for w in syncs]


def test_the_command_runs_on_the_gpu(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "device=cuda",
            "mlflow.enabled=false",
            "epochs=200",
            "optimizer=momentum",
            "lr=0.01",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "200 epochs, final loss" in done.stdout
