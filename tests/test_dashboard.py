"""Real clients: a sweep logged over HTTP to `python -m runner.dashboard` (a real
`mlflow server` on 127.0.0.1), read back through the REST API and in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pandas as pd
import pytest
from mlflow import MlflowClient
from support import REPO, run_cli, start_dashboard, stop_dashboard

from runner import dashboard

ARTIFACTS = REPO / "test-artifacts"  # screenshots, kept for a person to look at
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--window-size=1400,900",
    "--virtual-time-budget=20000",  # lets the single-page app fetch and render the runs
]  # fmt: skip


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard command on a fresh SQLite store; yields its base URL."""
    url, process = start_dashboard(tmp_path_factory.mktemp("dashboard"))
    yield url
    stop_dashboard(process)


@pytest.fixture(scope="module")
def sweep(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-job sweep whose jobs log over HTTP; returns what the REST API says of it."""
    work = tmp_path_factory.mktemp("sweep")
    done = run_cli(
        "-m",
        "lr=0.01,0.1",
        "optimizer=manual,sgd",
        "epochs=20",
        f"mlflow.tracking_uri={server}",
        "mlflow.experiment=served",
        cwd=work,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (work / "mlflow.db").exists()  # everything went to the server
    (sweep_dir,) = (work / "multirun").glob("*/*")
    api = f"{server}/api/2.0/mlflow"
    experiment = _get(f"{api}/experiments/get-by-name?experiment_name=served")["experiment"]
    runs = _post(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    return {"api": api, "experiment": experiment, "runs": runs, "sweep_dir": sweep_dir}


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.mark.slow
def test_sweep_over_http_is_complete_in_the_rest_api(sweep: dict) -> None:
    runs, api = sweep["runs"], sweep["api"]
    parents = [r for r in runs if "mlflow.parentRunId" not in _tags(r)]
    children = [r for r in runs if "mlflow.parentRunId" in _tags(r)]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    parent_id = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    assert _tags(parent)["best_run_id"] in {c["info"]["run_id"] for c in children}
    listed = _get(f"{api}/artifacts/list?run_id={parent_id}")
    assert {f["path"] for f in listed["files"]} == {
        "summary.csv",
        "final_loss_vs_lr.png",
        "losses.png",
    }

    summary = pd.read_csv(sweep["sweep_dir"] / "summary.csv")
    for child in children:
        run_id = child["info"]["run_id"]
        assert _tags(child)["mlflow.parentRunId"] == parent_id
        assert child["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert params["lr"] in {"0.01", "0.1"} and params["optimizer.name"] in {"manual", "sgd"}
        (job,) = summary.loc[summary["mlflow_run_id"] == run_id, "job"]
        csv = pd.read_csv(sweep["sweep_dir"] / str(job) / "metrics.csv")
        for name in ("loss", "a", "b", "grad_a", "grad_b"):
            query = urllib.parse.urlencode({"run_id": run_id, "metric_key": name})
            history = _get(f"{api}/metrics/get-history?{query}")["metrics"]
            got = sorted((m["step"], m["value"]) for m in history)
            assert got == list(enumerate(csv[name])), (run_id, name)


def _chromium(url: str, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, *HEADLESS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return done.stdout


def _page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_dashboard_shows_the_sweep_in_a_browser(server: str, sweep: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    experiment_id = sweep["experiment"]["experiment_id"]
    children = [r for r in sweep["runs"] if "mlflow.parentRunId" in _tags(r)]
    parent = next(r for r in sweep["runs"] if "mlflow.parentRunId" not in _tags(r))

    runs_page = f"{server}/#/experiments/{experiment_id}/runs"
    text = _page_text(_chromium(runs_page, "--dump-dom"))
    assert parent["info"]["run_name"] in text  # the sweep, its jobs grouped under it
    assert "5 matching runs" in text
    _chromium(runs_page, f"--screenshot={ARTIFACTS / 'dashboard-runs.png'}")

    ids = urllib.parse.quote(json.dumps([c["info"]["run_id"] for c in children]))
    experiments = urllib.parse.quote(json.dumps([experiment_id]))
    compare_page = f"{server}/#/compare-runs?runs={ids}&experiments={experiments}"
    text = _page_text(_chromium(compare_page, "--dump-dom"))
    assert "Comparing 4 Runs" in text
    for child in children:
        assert child["info"]["run_name"] in text
    _chromium(compare_page, f"--screenshot={ARTIFACTS / 'dashboard-compare.png'}")
    for shot in ("dashboard-runs.png", "dashboard-compare.png"):
        assert (ARTIFACTS / shot).stat().st_size > 20_000  # a rendered page, not a blank one


def _store(uri: str, *experiments: str) -> tuple[str, list[str]]:
    client = MlflowClient(uri)
    return uri, [client.create_experiment(name) for name in experiments]


def test_a_taken_port_is_one_line_and_exit_2(
    sqlite_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, _ = _store(sqlite_uri)
    capsys.readouterr()  # MLflow's own lines on creating the store
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert dashboard.main(["--port", str(port), "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no address of whatever else listens there
    assert captured.err.startswith(f"runner.dashboard: error: port {port} on 127.0.0.1 is taken (")
    assert captured.err.endswith("; pass --port\n") and captured.err.count("\n") == 1


def test_the_printed_address_opens_the_experiments_runs(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, (_, served) = _store(sqlite_uri, "other", "served")
    capsys.readouterr()  # MLflow's own lines on creating the store
    started: list[list[str]] = []
    monkeypatch.setattr(dashboard.os, "execv", lambda path, argv: started.append(argv))
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--port", str(port), "--tracking-uri", uri]
    assert dashboard.main([*args, "--experiment", "served"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"MLflow dashboard: http://127.0.0.1:{port}/#/experiments/{served}/runs ")
    assert started == [dashboard.server_command(uri, port)]

    assert dashboard.main([*args, "--experiment", "not yet"]) == 0  # no such experiment
    out = capsys.readouterr().out
    assert out.startswith(f"MLflow dashboard: http://127.0.0.1:{port}  (no experiment 'not yet'")


def test_dashboard_url() -> None:
    assert dashboard.dashboard_url(5001, "7") == "http://127.0.0.1:5001/#/experiments/7/runs"
    assert dashboard.dashboard_url(5001) == "http://127.0.0.1:5001"
