"""The model and its initialisation."""

from __future__ import annotations

import pytest
import torch
from support import make_config

from runner.config import ConfigError
from runner.run import build


def test_random_init_follows_the_seed() -> None:
    def start(seed: int) -> tuple[float, float]:
        m = build([make_config("model.init=random", f"seed={seed}")], None).model
        return m.by_name["a"][0].item(), m.by_name["b"][0].item()

    assert start(1) == start(1) != start(2)
    torch.manual_seed(1)
    expected = (torch.randn(()).item(), torch.randn(()).item())  # a first, then b, as seed 003
    assert start(1) == expected


def test_nobias_model_has_only_a() -> None:
    model = build([make_config("model=linear_nobias", "model.a=2")], None).model
    assert model.names() == ("a",)
    assert model(torch.tensor([[3.0]])).item() == 6.0  # x: [features, points]


K3 = ("data=synthetic", "data.features=3", "data.n=8")


def test_k_features_predict_w_dot_x_plus_b_from_their_starts() -> None:
    model = build([make_config(*K3, "model.w=[1,-2,0.5]", "model.b=0.25")], None).model
    assert model.names() == ("w1", "w2", "w3", "b")
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [features, points]
    assert model(x).tolist() == [[1 - 6 + 2.5 + 0.25, 2 - 8 + 3 + 0.25]]
    same = build([make_config(*K3, "model.a=0.7")], None).model  # model.w null: each at a
    assert [p.item() for p in same.member(0)] == pytest.approx([0.7, 0.7, 0.7, 1.0])


def test_k_features_random_init_draws_each_weight_then_b() -> None:
    m = build([make_config(*K3, "model.init=random", "seed=5")], None).model
    torch.manual_seed(5)
    assert [p.item() for p in m.member(0)] == [torch.randn(()).item() for _ in range(4)]


def test_a_start_for_each_feature_or_one_clear_line() -> None:
    with pytest.raises(ConfigError) as caught:
        build([make_config(*K3, "model.w=[1,2]")], None)
    assert str(caught.value).startswith("model.w=[1.0, 2.0] is not allowed: null or a list of 3")
