"""The model and its initialisation."""

from __future__ import annotations

import torch
from support import make_config

from runner.run import build


def test_random_init_follows_the_seed() -> None:
    def start(seed: int) -> tuple[float, float]:
        m = build([make_config("model.init=random", f"seed={seed}")], None).model
        return m.a[0].item(), m.b[0].item()

    assert start(1) == start(1) != start(2)
    torch.manual_seed(1)
    expected = (torch.randn(()).item(), torch.randn(()).item())  # a first, then b, as seed 003
    assert start(1) == expected


def test_nobias_model_has_only_a() -> None:
    model = build([make_config("model=linear_nobias", "model.a=2")], None).model
    assert model.names() == ("a",)
    assert model(torch.tensor([3.0])).item() == 6.0
