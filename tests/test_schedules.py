"""Learning-rate schedules: the lr column against torch.optim.lr_scheduler computed on its
own, and the hand-written and torch ways equal bit for bit under every schedule."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from support import make_config, train_history

from runner.config import ConfigError

SCHEDULES = {
    "step": (["schedule=step", "schedule.step_size=7", "schedule.gamma=0.5"],
             lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)),
    "exponential": (["schedule=exponential", "schedule.gamma=0.93"],
                    lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.93)),
    "cosine": (["schedule=cosine", "schedule.eta_min=0.01"],  # t_max: the run's 40 epochs
               lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40, eta_min=0.01)),
    "cosine_restart": (["schedule=cosine", "schedule.t_max=15"],  # past t_max it climbs back
                       lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 15)),
}  # fmt: skip
WAYS = list(itertools.product(["manual", "mse"], ["manual", "sgd"]))


def _torch_lrs(make_scheduler, lr: float, epochs: int) -> list[float]:
    """Each epoch's lr as torch's scheduler gives it, on an optimizer of its own."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_lr_column_is_torchs_schedule_and_every_way_gives_the_same_numbers(
    schedule: str,
) -> None:
    settings, make_scheduler = SCHEDULES[schedule]
    expected = _torch_lrs(make_scheduler, 0.1, 40)
    histories = []
    for loss, optimizer in WAYS:
        history, _ = train_history(f"loss={loss}", f"optimizer={optimizer}", "lr=0.1",
                                   "epochs=40", "chunk=9", *settings)  # fmt: skip
        assert history["lr"].tolist() == expected, (loss, optimizer)  # exact floats
        histories.append(history)
    for (loss, optimizer), history in zip(WAYS[1:], histories[1:], strict=True):
        pd.testing.assert_frame_equal(
            history, histories[0], check_exact=True, obj=f"{loss}/{optimizer}"
        )
    assert histories[0]["lr"].nunique() > 1  # it changed


def test_a_schedule_changes_the_path_from_its_first_change_on() -> None:
    constant, _ = train_history("optimizer=sgd", "lr=0.1", "epochs=20")
    stepped, _ = train_history("optimizer=sgd", "lr=0.1", "epochs=20", "schedule=step",
                               "schedule.step_size=5", "schedule.gamma=0.5")  # fmt: skip
    assert "lr" not in constant  # a constant lr is the run's lr: no column
    same = ["loss", "a", "b", "grad_a", "grad_b"]
    # Epoch 5's step is the first with a changed lr; epoch 6 is the first row it shows in.
    pd.testing.assert_frame_equal(constant[same][:6], stepped[same][:6], check_exact=True)
    assert (constant["a"][6:] != stepped["a"][6:]).all()


def test_adam_follows_its_schedule_too() -> None:
    history, _ = train_history("optimizer=adam", "lr=0.1", "epochs=30", "schedule=exponential",
                               "schedule.gamma=0.9")  # fmt: skip
    expected = _torch_lrs(lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.9), 0.1, 30)
    assert history["lr"].tolist() == expected


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["schedule.gamma=0.5"], "schedule.gamma"),  # constant has no gamma
        (["schedule=cosine", "schedule.step_size=3"], "schedule.step_size"),
        (["schedule=step", "schedule.t_max=10"], "schedule.t_max"),
        (["schedule=step", "schedule.step_size=0"], "schedule.step_size"),
        (["schedule=exponential", "schedule.gamma=0"], "schedule.gamma"),
        (["schedule=exponential", "schedule.gamma=null"], "schedule.gamma"),
        (["schedule=cosine", "schedule.eta_min=-1"], "schedule.eta_min"),
    ],
)
def test_a_schedule_setting_that_does_not_belong_or_is_out_of_range_is_refused(
    overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert err.value.key == key
