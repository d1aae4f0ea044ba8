"""Mini-batches and validation: every way gives the same numbers, a batch walks the data as
documented, the held-out points are drawn with the seed, and patience stops a run."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from support import make_config, member_of, train_history, train_setup

from runner.config import ConfigError
from runner.loop import How, split_steps, train
from runner.run import build

X = [0.1, 0.5, -0.3, 0.9, 0.2, -0.7, 0.4, 0.8, -0.1, 0.6]
Y = [1.2, 2.0, 0.1, 2.9, 1.3, -0.6, 1.9, 2.5, 0.8, 2.2]
POINTS = [f"data.x={X}".replace(" ", ""), f"data.y={Y}".replace(" ", "")]
WAYS = list(itertools.product(["manual", "mse"], ["manual", "sgd"]))
SAME = ["loss", "a", "b", "grad_a", "grad_b", "train_loss_mean"]


@pytest.mark.parametrize(
    "settings",
    [["shuffle=true"], ["shuffle=false"], ["shuffle=true", "drop_last=true"],
     ["shuffle=true", "optimizer.momentum=0.9", "schedule=exponential"]],
    ids=["shuffled", "in_order", "drop_last", "momentum_schedule"],
)  # fmt: skip
def test_every_way_gives_the_same_numbers_with_mini_batches(settings: list[str]) -> None:
    histories = []
    for loss, optimizer in WAYS:
        history, _ = train_history(*POINTS, f"loss={loss}", f"optimizer={optimizer}", "lr=0.1",
                                   "epochs=12", "chunk=5", "batch_size=3", *settings)  # fmt: skip
        histories.append(history)
    for (loss, optimizer), history in zip(WAYS[1:], histories[1:], strict=True):
        pd.testing.assert_frame_equal(history, histories[0], check_exact=True,
                                      obj=f"loss={loss} optimizer={optimizer}")  # fmt: skip
    assert list(histories[0].columns[-1:]) == ["train_loss_mean"]


def test_in_data_order_the_steps_walk_the_points_batch_by_batch() -> None:
    """The same steps written out with torch: batches x[0:3], x[3:6], x[6:9], x[9:10];
    log_steps records each of them."""
    logged, _ = train_history(*POINTS, "optimizer=sgd", "lr=0.1", "epochs=4", "batch_size=3",
                              "shuffle=false", "log_steps=true")  # fmt: skip
    history, steps = split_steps(logged, ("a", "b"), 4)
    assert list(steps.columns) == ["step", "epoch", "step_loss", "a", "b"]
    assert steps["step"].tolist() == list(range(16))
    assert steps["epoch"].tolist() == [e for e in range(4) for _ in range(4)]
    x, y = torch.tensor(X), torch.tensor(Y)
    a, b = torch.tensor([1.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    optimizer = torch.optim.SGD([a, b], lr=0.1)
    for epoch in range(4):
        row = history.iloc[epoch]
        assert (row["a"], row["b"]) == (a.item(), b.item())  # where the epoch started
        assert row["loss"] == pytest.approx(((a * x + b - y) ** 2).mean().item(), rel=1e-6)
        losses = []
        for k, start in enumerate(range(0, 10, 3)):
            step = steps.iloc[epoch * 4 + k]
            assert (step["a"], step["b"]) == (a.item(), b.item())  # where the step started
            loss = ((a * x[start : start + 3] + b - y[start : start + 3]) ** 2).mean()
            assert step["step_loss"] == pytest.approx(loss.item(), rel=1e-6)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert row["train_loss_mean"] == pytest.approx(np.mean(losses), rel=1e-6)
        assert row["grad_a"] == a.grad.item()  # the last step's gradient
    plain, _ = train_history(*POINTS, "optimizer=sgd", "lr=0.1", "epochs=4", "batch_size=3",
                             "shuffle=false")  # fmt: skip
    pd.testing.assert_frame_equal(history, plain, check_exact=True)  # logging changes nothing


def test_drop_last_never_steps_on_the_points_left_over() -> None:
    dropped, _ = train_history(*POINTS, "lr=0.1", "epochs=6", "batch_size=4", "shuffle=false",
                               "drop_last=true")  # fmt: skip
    first_8 = [f"data.x={X[:8]}".replace(" ", ""), f"data.y={Y[:8]}".replace(" ", "")]
    only_8, _ = train_history(*first_8, "lr=0.1", "epochs=6", "batch_size=4", "shuffle=false")
    columns = ["a", "b", "grad_a", "grad_b", "train_loss_mean"]
    pd.testing.assert_frame_equal(dropped[columns], only_8[columns], check_exact=True)
    assert (dropped["loss"] != only_8["loss"]).any()  # the loss still sees all ten points


def test_shuffling_follows_the_seed() -> None:
    runs = {
        seed: train_history(*POINTS, "lr=0.1", "epochs=5", "batch_size=3", f"seed={seed}")[0]
        for seed in (0, 0, 1)
    }
    again, _ = train_history(*POINTS, "lr=0.1", "epochs=5", "batch_size=3", "seed=0")
    in_order, _ = train_history(*POINTS, "lr=0.1", "epochs=5", "batch_size=3", "shuffle=false")
    pd.testing.assert_frame_equal(runs[0], again, check_exact=True)
    assert not runs[0]["a"].equals(runs[1]["a"]) and not runs[0]["a"].equals(in_order["a"])


def test_a_batch_of_shuffling_members_trains_each_as_it_would_train_alone() -> None:
    settings = [("seed=0", "lr=0.1"), ("seed=1", "lr=0.1"), ("seed=2", "lr=0.3", "epochs=9"),
                ("seed=0", "lr=0.05", "stop.tol=1e-3")]  # fmt: skip
    common = [*POINTS, "batch_size=4", "epochs=14", "chunk=4", "optimizer=sgd"]
    confs = [make_config(*common, *s) for s in settings]
    s = build(confs, None)
    histories: list[list[pd.DataFrame]] = [[] for _ in confs]
    members = [member_of(s, j, c, histories[j].append) for j, c in enumerate(confs)]
    outcomes = train(s.model, s.loss_fn, members, s.x, s.y, 4, batches=s.batches)
    for j, conf in enumerate(confs):
        alone, outcome = train_setup(build([conf], None), conf)
        pd.testing.assert_frame_equal(pd.concat(histories[j], ignore_index=True), alone,
                                      check_exact=True)  # fmt: skip
        assert outcomes[j] == outcome


def test_a_batch_size_that_leaves_no_step_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        build([make_config(*POINTS, "batch_size=11", "drop_last=true")], None)
    assert err.value.key == "batch_size" and "at most 10" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        make_config("batch_size=0")
    assert err.value.key == "batch_size"


def test_the_validation_points_are_drawn_with_the_seed_and_held_out() -> None:
    split = {seed: build([make_config(*POINTS, "data.val_fraction=0.3", f"seed={seed}")], None)
             for seed in (0, 1)}  # fmt: skip
    for s in split.values():
        train_x, val_x = s.x[0].tolist(), s.val[0][0].tolist()  # (the one feature)
        assert len(train_x) == 7 and len(val_x) == 3
        assert sorted(train_x + val_x) == sorted(torch.tensor(X).tolist())  # a partition
        assert s.points[0][0].tolist() == train_x  # the analysis sees the training points only
    assert split[0].val[0][0].tolist() != split[1].val[0][0].tolist()
    again = build([make_config(*POINTS, "data.val_fraction=0.3", "seed=0")], None)
    assert again.val[0].tolist() == split[0].val[0].tolist()


def test_val_loss_is_the_held_out_loss_at_the_rows_parameters() -> None:
    history, s = train_history(*POINTS, "data.val_fraction=0.3", "lr=0.1", "epochs=5")
    val_x, val_y = s.val
    for _, row in history.iterrows():
        expected = ((row["a"] * val_x + row["b"] - val_y) ** 2).mean().item()
        assert row["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert list(history.columns[:3]) == ["epoch", "loss", "val_loss"]


def test_patience_stops_once_val_loss_has_not_improved_for_that_many_epochs() -> None:
    overrides = [*POINTS, "data.val_fraction=0.3", "lr=0.15", "epochs=400", "chunk=7"]
    full, _ = train_history(*overrides)
    history, outcome = train_setup(build([make_config(*overrides, "stop.patience=4")], None),
                                   make_config(*overrides, "stop.patience=4"))  # fmt: skip
    best = full["val_loss"].cummin()
    since = 0
    for epoch in range(1, len(full)):  # the first epoch 4 epochs after the last improvement
        since = 0 if full["val_loss"][epoch] < best[epoch - 1] else since + 1
        if since == 4:
            break
    assert outcome.how == How.stalled and outcome.at_epoch == epoch
    pd.testing.assert_frame_equal(history, full.iloc[: epoch + 1], check_exact=True)


def test_patience_without_validation_points_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        make_config("stop.patience=3")
    assert err.value.key == "stop.patience"
    with pytest.raises(ConfigError) as err:
        make_config("log_steps=true")  # a whole-data epoch is one step
    assert err.value.key == "log_steps"
