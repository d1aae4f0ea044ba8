"""The epoch loop against the notebooks' printed numbers (shared/seeds)."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from support import make_config, member_of, train_history, train_setup

from runner.loop import Abandon, How, Member, Outcome, train
from runner.losses import manual_mse
from runner.model import Linear
from runner.run import build

COMBOS = list(itertools.product(["manual", "mse"], ["manual", "sgd"]))

# Seed 002, "Training loop with PyTorch's Autograd Module": the printed epochs 0-11.
SEED_002 = [
    (2.4166667461395264, 1.0, 1.0),
    (0.4854629337787628, 0.6666666269302368, 0.8500000238418579),
    (0.10228254646062851, 0.5188888311386108, 0.7816666960716248),
    (0.026139602065086365, 0.4537407159805298, 0.7497222423553467),
    (0.010897613130509853, 0.42538395524024963, 0.734001874923706),
    (0.007738022133708, 0.4134044051170349, 0.72552490234375),
    (0.006978096440434456, 0.4087107181549072, 0.7202915549278259),
    (0.0066972956992685795, 0.40725407004356384, 0.7165202498435974),
    (0.006514647975564003, 0.4072314500808716, 0.7134174108505249),
    (0.006354494486004114, 0.40783995389938354, 0.710629403591156),
    (0.006201764103025198, 0.4087221026420593, 0.7079984545707703),
    (0.006053395569324493, None, None),  # the notebook's output is cut after the loss
]


@pytest.mark.parametrize(("loss", "optimizer"), COMBOS)
def test_seed_000_one_step_of_theta(loss: str, optimizer: str) -> None:
    hist, s = train_history("experiment=seed_000", f"loss={loss}", f"optimizer={optimizer}")
    assert list(hist.columns) == ["epoch", "loss", "a", "grad_a"]  # y = theta * x, no bias
    assert hist.loc[0, "loss"] == 1.0
    assert hist.loc[0, "grad_a"] == -4.0
    assert hist.loc[0, "a"] == 1.0
    assert s.model.by_name["a"][0].item() == np.float32(1.4)


def test_seed_002_first_step() -> None:
    hist, _ = train_history("experiment=seed_002", "epochs=1")
    assert hist.loc[0, "loss"] == 2.4166667461395264
    assert round(hist.loc[0, "grad_a"], 4) == 6.6667
    assert round(hist.loc[0, "grad_b"], 4) == 3.0
    hist2, _ = train_history("experiment=seed_002", "epochs=2")
    assert (round(hist2.loc[1, "a"], 4), round(hist2.loc[1, "b"], 4)) == (0.6667, 0.85)


@pytest.mark.parametrize(("loss", "optimizer"), COMBOS)
def test_seed_002_matches_the_notebook(loss: str, optimizer: str) -> None:
    hist, _ = train_history("experiment=seed_002", f"loss={loss}", f"optimizer={optimizer}")
    assert len(hist) == 50 and hist["epoch"].tolist() == list(range(50))
    for epoch, (printed_loss, a, b) in enumerate(SEED_002):
        # The notebook prints float32 values as Python floats: equality is float32 equality.
        assert hist.loc[epoch, "loss"] == printed_loss, epoch
        if a is not None:
            assert (hist.loc[epoch, "a"], hist.loc[epoch, "b"]) == (a, b), epoch


def test_all_four_ways_give_the_same_trajectory_bit_for_bit() -> None:
    runs = [
        train_history("experiment=seed_002", f"loss={lo}", f"optimizer={op}", "chunk=7")[0]
        for lo, op in COMBOS
    ]
    assert np.isfinite(runs[0].to_numpy()).all()
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0], other, check_exact=True)


@pytest.mark.parametrize(
    "settings",
    [[], ["optimizer.momentum=0.9", "optimizer.nesterov=true", "optimizer.weight_decay=0.01"],
     ["batch_size=16", "schedule=cosine"], ["zero_grad=false", "lr=0.01"]],
    ids=["plain", "nesterov_decay", "minibatch_cosine", "accumulating"],
)  # fmt: skip
def test_all_four_ways_agree_bit_for_bit_with_k_features(settings: list[str]) -> None:
    features = [
        "data=synthetic",
        "data.n=50",
        "data.features=3",
        "data.true_w=[1,-2,0.5]",
        "data.correlation=0.6",
        "model.init=random",
        "lr=0.1",
        "epochs=40",
        "chunk=16",
    ]
    runs = [train_history(*features, f"loss={lo}", f"optimizer={op}", *settings)[0]
            for lo, op in COMBOS]  # fmt: skip
    assert {"w1", "w2", "w3", "b", "grad_w3"} <= set(runs[0].columns)
    assert np.isfinite(runs[0].to_numpy()).all() and runs[0]["w2"].nunique() == 40
    for (lo, op), other in zip(COMBOS[1:], runs[1:], strict=True):
        pd.testing.assert_frame_equal(runs[0], other, check_exact=True, obj=f"{lo} {op}")


def test_k_features_take_the_steps_written_out_with_torch() -> None:
    """The update w <- w - lr * 2/N sum (w . x + b - y) x, in float32, with torch alone."""
    hist, s = train_history("data=synthetic", "data.n=30", "data.features=2", "lr=0.2",
                            "epochs=5", "optimizer=sgd")  # fmt: skip
    x, y = s.x, s.y
    w, b = torch.ones(2, 1, requires_grad=True), torch.ones(1, requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=0.2)
    for epoch in range(5):
        row = hist.iloc[epoch]
        assert [row["w1"], row["w2"], row["b"]] == [*w.view(-1).tolist(), b.item()]
        optimizer.zero_grad()
        loss = ((w[0] * x[0] + w[1] * x[1] + b - y) ** 2).mean()
        loss.backward()
        assert row["loss"] == loss.item()
        optimizer.step()


def _fresh_gradient(a: float, b: float, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    model = Linear(
        {"a": torch.tensor([a], dtype=torch.float32)}, torch.tensor([b], dtype=torch.float32)
    )
    ((model(x) - y) ** 2).mean().backward()
    return np.array([p.grad.item() for p in model.member(0)], dtype=np.float32)


@pytest.mark.parametrize("optimizer", ["manual", "sgd"])
def test_seed_001_gradients_accumulate_without_zero_grad(optimizer: str) -> None:
    hist, s = train_history(
        "experiment=seed_002", f"optimizer={optimizer}", "zero_grad=false", "epochs=6"
    )
    recorded = hist[["grad_a", "grad_b"]].to_numpy(dtype=np.float32)
    fresh = [_fresh_gradient(a, b, s.x, s.y) for a, b in hist[["a", "b"]].to_numpy()]
    total = np.zeros(2, dtype=np.float32)
    for k, g in enumerate(fresh):
        total = total + g  # float32, in epoch order, as autograd adds into .grad
        np.testing.assert_array_equal(recorded[k], total, err_msg=f"epoch {k}")
    assert not np.array_equal(recorded[1], fresh[1])  # the lesson: epoch 1 is not fresh


@pytest.mark.parametrize("optimizer", ["manual", "sgd"])
def test_default_zero_grad_records_fresh_gradients(optimizer: str) -> None:
    hist, s = train_history("experiment=seed_002", f"optimizer={optimizer}", "epochs=6")
    for k, (a, b) in enumerate(hist[["a", "b"]].to_numpy()):
        recorded = hist.loc[k, ["grad_a", "grad_b"]].to_numpy(dtype=np.float32)
        np.testing.assert_array_equal(recorded, _fresh_gradient(a, b, s.x, s.y))


@pytest.mark.parametrize(("epochs", "chunk"), [(10, 3), (10, 10), (10, 1000), (1, 1)])
def test_chunks_cover_every_epoch_once(epochs: int, chunk: int) -> None:
    model = Linear({"a": torch.tensor([1.0])}, torch.tensor([1.0]))
    x, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([1.0, 1.5, 2.0])  # x: [features, points]
    opt = torch.optim.SGD(model.member(0), lr=0.05)
    chunks: list[pd.DataFrame] = []
    (outcome,) = train(model, manual_mse, [Member(opt, epochs, chunks.append)], x, y, chunk)
    assert outcome.how == How.finished and outcome.epochs == epochs
    assert [len(c) for c in chunks] == [min(chunk, epochs - i) for i in range(0, epochs, chunk)]
    assert pd.concat(chunks)["epoch"].tolist() == list(range(epochs))


def test_final_parameters_are_after_the_last_step() -> None:
    hist, s = train_history("experiment=seed_002", "epochs=3")
    a2, b2, ga, gb = hist.loc[2, ["a", "b", "grad_a", "grad_b"]].to_numpy(dtype=np.float32)
    lr = np.float32(0.05)
    assert s.model.by_name["a"][0].item() == a2 - lr * ga
    assert s.model.by_name["b"][0].item() == b2 - lr * gb


@pytest.mark.parametrize("chunk", [5, 1000])
def test_divergence_keeps_the_finite_rows_and_stops(chunk: int) -> None:
    conf = make_config("experiment=seed_002", "lr=1.5", f"chunk={chunk}")
    history, outcome = train_setup(build([conf], None), conf)
    assert outcome.how == How.diverged and outcome.at_epoch == 16 and outcome.epochs == 16
    assert history["epoch"].tolist() == list(range(16))
    assert np.isfinite(history.to_numpy()).all()


def test_a_loss_that_is_not_finite_at_epoch_0_diverges_at_0() -> None:
    conf = make_config("data.x=[1e20,2e20]", "data.y=[0,0]", "data.true_a=null",
                       "data.true_b=null")  # fmt: skip
    history, outcome = train_setup(build([conf], None), conf)
    assert outcome.how == How.diverged and outcome.at_epoch == 0 and outcome.epochs == 0
    assert history.empty


@pytest.mark.parametrize("chunk", [7, 1000])
def test_tolerance_stops_at_the_first_small_change_with_exact_parameters(chunk: int) -> None:
    full, _ = train_history("experiment=seed_002", "epochs=50")
    change = full["loss"].diff().abs()
    k = int(np.flatnonzero(change < 1e-4)[0])
    conf = make_config("experiment=seed_002", "stop.tol=1e-4", f"chunk={chunk}")
    s = build([conf], None)
    kept, outcome = train_setup(s, conf)
    assert outcome.how == How.converged and outcome.at_epoch == k
    pd.testing.assert_frame_equal(kept, full.iloc[: k + 1])
    # The model holds the parameters after step k, as if it had stopped right there.
    assert tuple(p.item() for p in s.model.member(0)) == tuple(full.loc[k + 1, ["a", "b"]])


def test_a_stop_request_ends_at_an_epoch_boundary_with_every_row() -> None:
    conf = make_config("experiment=seed_002", "chunk=5", "epochs=50")
    s = build([conf], None)
    stop = threading.Event()
    calls = 0

    def loss_then_stop(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 13:  # during epoch 12: the loop stops before epoch 13
            stop.set()
        return manual_mse(y_hat, y)

    s.loss_fn = loss_then_stop
    kept, outcome = train_setup(s, conf, stop=stop)
    assert outcome.how == How.interrupted and outcome.epochs == 13
    assert kept["epoch"].tolist() == list(range(13))


def test_interrupt_hands_out_the_completed_epochs_first() -> None:
    s = build([make_config("experiment=seed_002")], None)
    calls = 0

    def loss_then_ctrl_c(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 14:  # during epoch 13
            raise KeyboardInterrupt
        return manual_mse(y_hat, y)

    kept: list[pd.DataFrame] = []
    with pytest.raises(KeyboardInterrupt):
        train(s.model, loss_then_ctrl_c, [Member(s.optimizers[0], 50, kept.append)], s.x, s.y, 5)
    assert [len(f) for f in kept] == [5, 5, 3]
    assert pd.concat(kept)["epoch"].tolist() == list(range(13))


def test_a_stop_while_a_batch_s_chunk_is_handed_over_keeps_the_rest_from_every_sink() -> None:
    """Handing a chunk over waits on the store: a stop meanwhile ends the batch there. The
    members handed the chunk keep it, the others keep the chunks before it, whole."""
    confs = [make_config("experiment=seed_002", "epochs=50") for _ in range(3)]
    s = build(confs, None)
    stop = threading.Event()
    kept: list[list[pd.DataFrame]] = [[], [], []]

    def write(j: int) -> Callable[[pd.DataFrame], None]:
        def written(chunk: pd.DataFrame) -> None:
            kept[j].append(chunk)
            if j == 0 and int(chunk["epoch"].iloc[0]) == 10:  # member 0 takes its third chunk
                stop.set()

        return written

    members = [Member(s.optimizers[j], 50, write(j)) for j in range(3)]
    outcomes = train(s.model, s.loss_fn, members, s.x, s.y, chunk=5, stop=stop)
    assert [len(pd.concat(k)) for k in kept] == [15, 10, 10]  # no sink of 1 or 2 saw 10-14
    assert [(o.how, o.epochs) for o in outcomes] == [(How.interrupted, 15),
                                                     (How.interrupted, 10),
                                                     (How.interrupted, 10)]  # fmt: skip


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_manual_momentum_equals_torch_sgd_epoch_by_epoch(
    nesterov: bool, weight_decay: float
) -> None:
    common = ["experiment=seed_002", "optimizer.momentum=0.9", f"optimizer.nesterov={nesterov}",
              f"optimizer.weight_decay={weight_decay}", "epochs=60"]  # fmt: skip
    manual, _ = train_history(*common, "optimizer=manual")
    torch_sgd, _ = train_history(*common, "optimizer=sgd")
    pd.testing.assert_frame_equal(manual, torch_sgd, check_exact=True)
    plain, _ = train_history("experiment=seed_002", "optimizer=manual", "epochs=60")
    assert not manual.equals(plain)  # momentum really changes the path


def test_adam_and_the_momentum_preset_train() -> None:
    adam, _ = train_history("experiment=seed_002", "optimizer=adam", "lr=0.05", "epochs=200")
    momentum, _ = train_history(
        "experiment=seed_002", "optimizer=momentum", "lr=0.01", "epochs=200"
    )
    for hist in (adam, momentum):
        assert hist["loss"].iloc[-1] < 0.01 * hist["loss"].iloc[0]


def test_a_batch_trains_each_member_as_it_would_train_alone() -> None:
    """Members with their own lr, init, epochs, momentum, zero_grad and stop.tol, trained as
    one batch: each one's history is, bit for bit, its history alone; each ends on its own."""
    settings = [
        ("lr=0.05", "epochs=30"),
        ("lr=1.5", "epochs=40"),  # diverges at epoch 16, the others go on
        ("lr=0.1", "model.init=random", "seed=3", "epochs=25", "zero_grad=false"),
        ("lr=0.02", "optimizer.momentum=0.9", "optimizer.nesterov=true", "epochs=45"),
        ("lr=0.05", "stop.tol=1e-4", "epochs=50", "check_grad=true"),
        ("lr=0.15", "schedule=step", "schedule.step_size=4", "epochs=30"),  # lr column too
        ("lr=0.1", "schedule=cosine", "epochs=35", "schedule.eta_min=0.01"),
    ]
    for optimizer in ("manual", "sgd"):
        confs = [make_config("experiment=seed_002", f"optimizer={optimizer}", "chunk=7", *s)
                 for s in settings]  # fmt: skip
        s = build(confs, None)
        histories: list[list[pd.DataFrame]] = [[] for _ in confs]
        members = [member_of(s, j, c, histories[j].append) for j, c in enumerate(confs)]
        outcomes = train(s.model, s.loss_fn, members, s.x, s.y, chunk=7)
        for j, conf in enumerate(confs):
            alone, outcome = train_setup(build([conf], None), conf)
            pd.testing.assert_frame_equal(
                pd.concat(histories[j], ignore_index=True), alone, check_exact=True
            )
            assert outcomes[j] == outcome
        assert [o.how for o in outcomes] == [How.finished, How.diverged, How.finished,
                                              How.finished, How.converged, How.finished,
                                              How.finished]  # fmt: skip


def test_a_member_whose_record_fails_ends_and_the_others_go_on() -> None:
    confs = [make_config("experiment=seed_002", "epochs=20") for _ in range(2)]
    s = build(confs, None)

    def full_disk(chunk: pd.DataFrame) -> None:
        raise Abandon("cannot write metrics.csv (No space left on device)")

    kept: list[pd.DataFrame] = []
    members = [Member(s.optimizers[0], 20, full_disk), Member(s.optimizers[1], 20, kept.append)]
    outcomes = train(s.model, s.loss_fn, members, s.x, s.y, chunk=5)
    assert outcomes[0].how == How.abandoned and outcomes[0].epochs == 0
    assert "No space left" in outcomes[0].detail
    assert outcomes[1].how == How.finished and len(pd.concat(kept)) == 20


def test_a_trial_its_pruner_stops_ends_at_that_chunk_and_the_others_go_on() -> None:
    """Member.report gets each chunk's last epoch and loss; True ends that member there
    (pruned), its rows written, while the others train on unchanged."""
    confs = [make_config("experiment=seed_002", "epochs=30", "lr=0.05") for _ in range(3)]
    s = build(confs, None)
    histories: list[list[pd.DataFrame]] = [[] for _ in confs]
    reports: list[tuple[int, float]] = []

    def prune_at_14(epoch: int, loss: float) -> bool:
        reports.append((epoch, loss))
        return epoch == 14

    members = [member_of(s, j, c, histories[j].append) for j, c in enumerate(confs)]
    members[1] = dataclasses.replace(members[1], report=prune_at_14)
    skipped = Outcome(How.pruned, epochs=0, detail="stability")
    members[2] = dataclasses.replace(members[2], skip=skipped)
    outcomes = train(s.model, s.loss_fn, members, s.x, s.y, chunk=5)
    assert outcomes[1] == Outcome(How.pruned, 15, 14)
    assert outcomes[2] == skipped and not histories[2]
    pruned, alone = pd.concat(histories[1]), pd.concat(histories[0])
    assert outcomes[0].how == How.finished and len(alone) == 30
    # the pruned member's rows are the first 15 of the same run trained to the end
    pd.testing.assert_frame_equal(
        pruned.reset_index(drop=True), alone.iloc[:15].reset_index(drop=True)
    )
    assert reports == [(4, alone["loss"].iloc[4]), (9, alone["loss"].iloc[9]),
                       (14, alone["loss"].iloc[14])]  # fmt: skip


def test_a_batch_whose_members_are_all_skipped_does_not_train() -> None:
    (conf,) = [make_config("experiment=seed_002")]
    s = build([conf], None)
    before = s.model.stacked("a").clone()
    skipped = Outcome(How.pruned, epochs=0, detail="stability")
    member = dataclasses.replace(member_of(s, 0, conf, lambda chunk: None), skip=skipped)
    assert train(s.model, s.loss_fn, [member], s.x, s.y) == [skipped]
    assert torch.equal(s.model.stacked("a"), before)
