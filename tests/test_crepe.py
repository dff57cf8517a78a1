from __future__ import annotations

import pytest
import torch

from audiolab.nets.crepe import BASE_FILTERS, CAPACITY_MULTIPLIERS, Crepe


@pytest.mark.parametrize("capacity", list(CAPACITY_MULTIPLIERS))
def test_shapes_and_filters(capacity):
    net = Crepe(capacity).eval()
    mult = CAPACITY_MULTIPLIERS[capacity]
    assert [getattr(net, f"conv{i}").out_channels for i in range(1, 7)] == [mult * f for f in BASE_FILTERS]
    assert net.conv1.kernel_size == (512,) and net.conv1.stride == (4,)
    assert all(getattr(net, f"conv{i}").kernel_size == (64,) for i in range(2, 7))
    frames = torch.randn(2, 3, 1024)
    with torch.no_grad():
        act = net(frames)
        emb = net.embed(frames)
    assert act.shape == (2, 3, 360) and act.min() >= 0 and act.max() <= 1
    # fifth block: 16 x multiplier... i.e. filters[4] channels over 8 time steps
    assert emb.shape == (2, 3, mult * BASE_FILTERS[4] * 8)


def test_full_capacity_parameter_count():
    # CREPE "full" has 22.2 M parameters (Kim et al. 2018 / the reference implementation)
    n = sum(p.numel() for p in Crepe("full").parameters())
    assert 22.0e6 < n < 22.5e6, n


def test_frames_are_normalised_inside_the_network():
    net = Crepe("tiny").eval()
    frames = torch.randn(4, 1024)
    with torch.no_grad():
        assert torch.allclose(net(frames), net(3.0 * frames + 0.5), atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="frames of 1024 samples"):
        Crepe("tiny")(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="unknown CREPE capacity 'huge'"):
        Crepe("huge")
