"""runner/optimizers.py: the registry builds each optimizer and declares its facts."""

from __future__ import annotations

import logging

import pytest
import torch
from support import make_config

from runner import optimizers, run
from runner.config import OptimizerName
from runner.run import build


def test_the_registry_says_where_the_stability_limit_applies() -> None:
    applies = {o: optimizers.stability_limit_applies(make_config(f"optimizer={o}").optimizer)
               for o in ("manual", "sgd", "momentum", "adam")}  # fmt: skip
    assert applies == {"manual": True, "sgd": True, "momentum": False, "adam": False}


def test_an_optimizer_the_limit_does_not_apply_to_is_neither_warned_about_nor_pruned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A throwaway optimizer registered in sgd's place (RMSprop: steps scaled per parameter)
    at lr far above 2/λmax: no warning, no pruning before training, no limit reported. The
    registry decides, not the optimizer's name (the trap of issue 26)."""
    rmsprop = optimizers.Entry(
        lambda params, lr, cfg: torch.optim.RMSprop(params, lr=lr),
        stability_limit=lambda cfg: False,
    )
    conf = make_config("experiment=seed_002", "optimizer=sgd", "lr=1.5")
    before = build([conf], None).best
    assert run._diverges(conf, before)  # sgd itself: beyond its limit, pruned by the maths
    monkeypatch.setitem(optimizers.OPTIMIZERS, OptimizerName.sgd, rmsprop)
    s = build([conf], None)
    assert isinstance(s.optimizers[0], torch.optim.RMSprop)
    with caplog.at_level(logging.WARNING, logger="runner"):
        run._warn_if_unstable(conf, s.best)
    assert caplog.records == []
    assert not run._diverges(conf, s.best)
    assert not run.plain_gradient_descent(conf)
