"""Benchmark: the runner against a hand-written per-epoch-logging script and a bare torch loop.

    python scripts/bench.py                  # every case, medians of 3 runs (about 10 minutes)
    python scripts/bench.py --quick          # tiny sizes, one run each: a smoke test
    python scripts/bench.py --cases floor,run50 --repeat 5
    python scripts/bench.py --cuda           # adds the GPU case (10M points, 500 epochs)

Every timing is the wall time of a fresh process, as a user waits for it, measured in a
temporary directory whose SQLite store already exists (so no case pays for creating it).
Writes the table to bench-results/bench.csv and bench-results/bench.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PY = sys.executable
BASIC = "hydra/launcher=basic"  # one job at a time, each composed by Hydra

# Importing what every run needs, one torch.optim.SGD, opening the store: what no run avoids.
FLOOR = """
import torch, hydra, mlflow, pandas
from mlflow import MlflowClient
p = torch.zeros(2, requires_grad=True)
torch.optim.SGD([p], lr=0.1)
MlflowClient("sqlite:///" + __import__("os").path.abspath("mlflow.db")).search_experiments()
"""

# The script users write by hand: log_metrics every epoch, the CSV built at the end.
HANDWRITTEN = """
import os
from dataclasses import dataclass

import hydra
import mlflow
import pandas as pd
import torch
from hydra.core.config_store import ConfigStore


@dataclass
class Cfg:
    lr: float = 0.05
    epochs: int = 50


ConfigStore.instance().store(name="cfg", node=Cfg)


@hydra.main(config_name="cfg", version_base="1.3")
def main(cfg: Cfg) -> float:
    mlflow.set_tracking_uri("sqlite:///" + os.path.abspath("mlflow.db"))
    mlflow.set_experiment("handwritten")
    x = torch.tensor([1.0, 2.0, 3.0])
    y = 0.5 * x + 0.5
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(1.0, requires_grad=True)
    opt = torch.optim.SGD([a, b], lr=cfg.lr)
    rows = []
    with mlflow.start_run():
        mlflow.log_params({"lr": cfg.lr, "epochs": cfg.epochs})
        for epoch in range(cfg.epochs):
            loss = ((a * x + b - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            row = {"loss": loss.item(), "a": a.item(), "b": b.item(),
                   "grad_a": a.grad.item(), "grad_b": b.grad.item()}
            mlflow.log_metrics(row, step=epoch)
            rows.append({"epoch": epoch, **row})
            opt.step()
        pd.DataFrame(rows).to_csv(os.path.join(
            hydra.core.hydra_config.HydraConfig.get().runtime.output_dir, "metrics.csv"))
    return rows[-1]["loss"]


main()
"""

# MLflow's own store time per job of a 50-epoch sweep, measured in-process with the
# tracking process's functions: open the run (params, tags), 50 epochs x 7 metrics, end it
# (final metrics, tags, the CSV and config.yaml as artifacts). The floor of a sweep's
# marginal cost per job, however the jobs are trained. Prints seconds per job.
STORE = """
import os, sys, time, numpy as np
from runner.tracking import Ending, RunSpec, end_run, log_metrics, open_run
jobs = int(sys.argv[1])
uri = "sqlite:///" + os.path.abspath("mlflow.db")
open("metrics.csv", "w").write("epoch,loss\\n" + "".join(f"{e},0.5\\n" for e in range(50)))
params = {f"p{i}": str(i) for i in range(35)}
tags = {f"t{i}": "x" * 20 for i in range(18)}
columns = {f"c{i}": np.random.rand(50) for i in range(7)}
end = Ending("FINISHED", metrics={f"final_{i}": 1.0 for i in range(6)}, files=["metrics.csv"],
             texts={"config.yaml": "lr: 0.05\\n" * 40})
end_run(uri, open_run(RunSpec(uri, "store", "warm", params, tags)), end)
start = time.perf_counter()
for k in range(jobs):
    run_id = open_run(RunSpec(uri, "store", f"r{k}", params, tags))
    log_metrics(uri, run_id, np.arange(50), columns)
    end_run(uri, run_id, end)
print((time.perf_counter() - start) / jobs)
"""

# The same math with no logging at all; prints the loop's own time.
BARE = """
import sys, time, torch
n, epochs, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(0)
x = (torch.rand(n, generator=g) * 2 - 1).to(device)
y = 2 * x - 1 + 0.1 * torch.randn(n, generator=g).to(device)
a = torch.tensor(1.0, device=device, requires_grad=True)
b = torch.tensor(1.0, device=device, requires_grad=True)
opt = torch.optim.SGD([a, b], lr=0.05)
for _ in range(5):  # warm-up, as the runner's timed pass is warm too
    loss = ((a * x + b - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
if device == "cuda":
    torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(epochs):
    loss = ((a * x + b - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
if device == "cuda":
    torch.cuda.synchronize()
print(time.perf_counter() - start)
"""

# The runner's loop in-process on the GPU, with the sync checker on: any host sync besides
# the one per chunk raises. Prints the loop's time.
RUNNER_CUDA_LOOP = """
import sys, time, warnings, torch
from pathlib import Path
from runner import gate
from runner.loop import Member, train
from runner.run import build
n, epochs = int(sys.argv[1]), int(sys.argv[2])
overrides = ["device=cuda", "data=synthetic", f"data.n={n}", f"epochs={epochs}", "optimizer=sgd"]
conf = gate.typed(gate.compose_checked(overrides, {}))
def epoch_loop(conf, s):
    chunks = []
    member = Member(s.optimizers[0], conf.epochs, chunks.append)
    train(s.model, s.loss_fn, [member], s.x, s.y, conf.chunk)
    return chunks
# Pass 1, untimed: warms the kernels up and counts host syncs with torch's checker on.
s = build([conf], Path.cwd())
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    chunks = len(list(epoch_loop(conf, s)))
torch.cuda.set_sync_debug_mode(0)
syncs = sum("synchroniz" in str(w.message) for w in caught)
# Pass 2, timed, with the checker off (it slows every operation down).
s = build([conf], Path.cwd())
torch.cuda.synchronize()
start = time.perf_counter()
for _ in epoch_loop(conf, s):
    pass
torch.cuda.synchronize()
print(time.perf_counter() - start, chunks, syncs)
"""


@dataclass
class Case:
    name: str
    what: str
    command: list[str]
    inner: bool = False  # the command prints its own time (a loop measured in-process)
    once: bool = False  # minutes long: measured once, whatever --repeat says


def _timed(command: list[str], cwd: Path, inner: bool) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 2):  # 2: the config-error case, expected
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[0]) if inner else wall


def _fresh(command: list[str], grids: Iterator[int]) -> list[str]:
    """A runner sweep with a seed of its own: a grid no earlier case trained, so none of its
    jobs is reused (runner/reuse.py) while each is still looked up in the store."""
    if command[:3] == [PY, "-m", "runner"] and "-m" in command[3:]:
        return [*command, f"seed={next(grids)}"]
    return command


def _script(home: Path, name: str, text: str) -> str:
    path = home / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def cases(home: Path, quick: bool, cuda: bool) -> list[Case]:
    floor = _script(home, "floor.py", FLOOR)
    hand = _script(home, "handwritten.py", HANDWRITTEN)
    bare = _script(home, "bare.py", BARE)
    long_epochs = 500 if quick else 10_000
    million = 20_000 if quick else 1_000_000  # epochs of the long-run target
    big_n, big_epochs = (10_000, 20) if quick else (1_000_000, 200)
    jobs_small, jobs_big = (2, 4) if quick else (10, 50)
    grid_small, grid_big = (2, 8) if quick else (10, 200)
    lrs = lambda k: f"lr=range(0.001,{0.001 * (k + 0.5):.4f},0.001)"  # noqa: E731 - k values
    store = _script(home, "store.py", STORE)
    run, by_hand = [PY, "-m", "runner"], [PY, hand]
    sgd = "optimizer=sgd"
    big = ["data=synthetic", f"data.n={big_n}", f"epochs={big_epochs}", sgd]
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out = [
        Case("floor", "import torch, hydra, mlflow, pandas; one SGD; open the store", [PY, floor]),
        Case("run50", "runner: optimizer=sgd lr=0.05 (50 epochs)", [*run, sgd, "lr=0.05"]),
        Case("run50_noplots", "runner: same, plots=false", [*run, sgd, "lr=0.05", "plots=false"]),
        Case("run50_nomodel", "runner: same, mlflow.log_model=false",
             [*run, sgd, "lr=0.05", "mlflow.log_model=false"]),
        Case("hand50", "hand-written: 50 epochs", [PY, hand]),
        Case("run_long", f"runner: {long_epochs} epochs", [*run, sgd, f"epochs={long_epochs}"]),
        Case("hand_long", f"hand-written: {long_epochs} epochs",
             [*by_hand, f"epochs={long_epochs}"]),
        Case("run_million", f"runner: {million:,} epochs, mlflow.log_every=1000",
             [*run, sgd, f"epochs={million}", "mlflow.log_every=1000", "plots=false"], once=True),
        Case("bare_million", f"bare torch loop: 3 points, {million:,} epochs (loop only)",
             [PY, bare, "3", str(million), "cpu"], inner=True, once=True),
        Case("sweep_small", f"runner: {jobs_small}-job sweep, basic launcher",
             [*run, "-m", BASIC, lrs(jobs_small)]),
        Case("sweep_big", f"runner: {jobs_big}-job sweep, basic launcher",
             [*run, "-m", BASIC, lrs(jobs_big)]),
        Case("grid_small", f"runner: {grid_small}-job sweep, batched launcher (the default)",
             [*run, "-m", lrs(grid_small)]),
        Case("grid_big", f"runner: {grid_big}-job sweep, batched launcher (the default)",
             [*run, "-m", lrs(grid_big)]),
        Case("grid_big_basic", f"runner: {grid_big}-job sweep, basic launcher",
             [*run, "-m", BASIC, lrs(grid_big)], once=True),
        Case("hand_grid_big", f"hand-written: {grid_big}-job sweep",
             [*by_hand, "-m", lrs(grid_big)], once=True),
        Case("store_per_job", "MLflow's own store time per job of a 50-epoch sweep",
             [PY, store, str(grid_big)], inner=True),
        Case("hand_sweep_small", f"hand-written: {jobs_small}-job sweep",
             [*by_hand, "-m", lrs(jobs_small)]),
        Case("hand_sweep_big", f"hand-written: {jobs_big}-job sweep",
             [*by_hand, "-m", lrs(jobs_big)]),
        Case("sweep_parallel", f"runner: {jobs_big}-job sweep, joblib n_jobs=2",
             [*run, "-m", *joblib, lrs(jobs_big)]),
        Case("run_big", f"runner: {big_n:,} points, {big_epochs} epochs", [*run, *big]),
        Case("bare_big", f"bare torch loop: {big_n:,} points, {big_epochs} epochs (loop only)",
             [PY, bare, str(big_n), str(big_epochs), "cpu"], inner=True),
        Case("config_error", "runner: a config error (lr=0)", [*run, "lr=0"]),
        Case("help", "runner: --help", [*run, "--help"]),
    ]  # fmt: skip
    if cuda:
        loop = _script(home, "runner_cuda.py", RUNNER_CUDA_LOOP)
        n, epochs = (100_000, 50) if quick else (10_000_000, 500)
        out += [
            Case("bare_cuda", f"bare CUDA loop: {n:,} points, {epochs} epochs (loop only)",
                 [PY, bare, str(n), str(epochs), "cuda"], inner=True),
            Case("runner_cuda", f"runner loop on CUDA: {n:,} points, {epochs} epochs (loop only)",
                 [PY, loop, str(n), str(epochs)], inner=True),
        ]  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the median counts)")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--cuda", action="store_true", help="add the CUDA cases")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        chosen = cases(home, args.quick, args.cuda)
        if args.cases:
            chosen = [c for c in chosen if c.name in args.cases.split(",")]
        if any(not c.inner for c in chosen):  # whole commands: give them an existing store
            subprocess.run([PY, "-c", FLOOR], cwd=home, check=True, capture_output=True)
        times: dict[str, float] = {}
        grids = itertools.count(1)
        for case in chosen:
            runs = [
                _timed(_fresh(case.command, grids), home, case.inner)
                for _ in range(1 if case.once else repeat)
            ]
            times[case.name] = statistics.median(runs)
            print(f"{case.name:18s} {times[case.name]:8.2f} s  {case.what}", flush=True)

    table = pd.DataFrame(
        [{"case": c.name, "what": c.what, "seconds": round(times[c.name], 3)} for c in chosen]
    )
    checks = targets(times, quick=args.quick)
    args.out.mkdir(exist_ok=True)
    table.to_csv(args.out / "bench.csv", index=False)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    md = [f"Benchmark of {time.strftime('%Y-%m-%d')} on {machine}; medians of {repeat} runs.\n",
          _markdown(table), "", _markdown(pd.DataFrame(checks)), ""]  # fmt: skip
    (args.out / "bench.md").write_text("\n".join(md))
    print("\n" + "\n".join(md[1:]))
    return 0


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False)  # needs tabulate (the dev extra)


def targets(t: dict[str, float], quick: bool) -> list[dict[str, object]]:
    """Issue 5's targets as ratios; which of them the measured numbers meet."""
    rows: list[dict[str, object]] = []

    def add(target: str, value: float, limit: float, fmt: str, ok: bool) -> None:
        rows.append({"target": target, "measured": fmt.format(value), "limit": fmt.format(limit),
                     "met": "yes" if ok else "NO"})  # fmt: skip

    if {"run50", "floor"} <= t.keys():
        add(
            "50 epochs: runner / floor",
            t["run50"] / t["floor"],
            1.1,
            "{:.2f}x",
            t["run50"] <= 1.1 * t["floor"],
        )
    if {"run50", "run50_nomodel"} <= t.keys():  # decides log_model's default (issue 14)
        cost = t["run50"] / t["run50_nomodel"] - 1
        add("the run's MLflow model: extra cost", cost, 0.10, "{:.0%}", cost <= 0.10)
    if {"run_million", "bare_million", "floor"} <= t.keys():
        limit = t["floor"] + 1.3 * t["bare_million"]
        add("1M epochs, log_every=1000: runner / (floor + 1.3 x bare)", t["run_million"] / limit,
            1.0, "{:.2f}", t["run_million"] <= limit)  # fmt: skip
    if {"run_long", "hand_long"} <= t.keys():
        speedup = t["hand_long"] / t["run_long"]
        add("long run: hand-written / runner", speedup, 6.0, "{:.1f}x", speedup >= 6)
    if {"sweep_small", "sweep_big"} <= t.keys():
        small, big = (2, 4) if quick else (10, 50)
        per_job = (t["sweep_big"] - t["sweep_small"]) / (big - small)
        add("sweep: marginal cost per job", per_job, 0.1, "{:.3f} s", per_job <= 0.1)
    if {"grid_small", "grid_big"} <= t.keys():
        small, big = (2, 8) if quick else (10, 200)
        per_job = (t["grid_big"] - t["grid_small"]) / (big - small)
        add("batched sweep: marginal cost per job", per_job, 0.040, "{:.3f} s", per_job <= 0.040)
        if "store_per_job" in t:
            share = t["store_per_job"] / per_job
            add("  of which MLflow's store (the floor)", share, 1.0, "{:.0%}", True)
    if {"grid_big", "run50"} <= t.keys():
        ratio = t["grid_big"] / t["run50"]
        add("batched sweep / one run", ratio, 4.0, "{:.1f}x", ratio <= 4.0)
    if {"sweep_big", "sweep_parallel"} <= t.keys():
        add("sweep: parallel / serial", t["sweep_parallel"] / t["sweep_big"], 1.0, "{:.2f}x",
            t["sweep_parallel"] < t["sweep_big"])  # fmt: skip
    if {"run_big", "floor", "bare_big"} <= t.keys():
        ratio = (t["run_big"] - t["floor"]) / t["bare_big"]
        add("big data: (runner - floor) / bare loop", ratio, 1.15, "{:.2f}x", ratio <= 1.15)
    for case in ("config_error", "help"):
        if case in t:
            add(f"{case}: wall", t[case], 1.0, "{:.2f} s", t[case] < 1.0)
    if {"runner_cuda", "bare_cuda"} <= t.keys():
        ratio = t["runner_cuda"] / t["bare_cuda"]
        add("CUDA loop: runner / bare", ratio, 1.1, "{:.2f}x", ratio <= 1.1)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
