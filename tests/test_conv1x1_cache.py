"""The 1x1 convolutions reuse ``W`` and ``W^-1`` between gradient-free calls, never a stale one."""

from __future__ import annotations

import copy

import pytest
import torch

from msflow.transforms import InvConv1x1
from msflow.transforms.conv1x1 import StridedInvConv

BLOCKS = {
    "lu": lambda: InvConv1x1(6, lu=True),
    "plain": lambda: InvConv1x1(6, lu=False),
    "strided": lambda: StridedInvConv(2, k=2, kappa=None),
}


def fresh(block: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` and ``log|det W|`` recomputed from the parameters, bypassing the cache."""
    return block._weight_and_logabsdet()


@pytest.mark.parametrize("make", BLOCKS.values(), ids=BLOCKS.keys())
def test_cache_is_reused_without_grad_and_refreshed_after_an_optimizer_step(make) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    block = make()
    x = torch.randn(3, block.output_shape((block.num_channels // getattr(block, "k", 1) ** 2, 4, 4))[0], 2, 2)
    with torch.no_grad():
        w1, _ = block.weight_and_logabsdet()
        assert block.weight_and_logabsdet()[0] is w1  # the same tensor: not recomputed
        w1 = w1.clone()  # (the plain block's W is its parameter, which the step below changes)
        inv1, _ = block.inverse_weight_and_logabsdet()
        assert block.inverse_weight_and_logabsdet()[0] is inv1
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    z, logdet = block.inverse(x)  # with gradients: computed afresh, differentiable
    (z.square().sum() + logdet.sum()).backward()
    opt.step()
    with torch.no_grad():
        w2, logabsdet2 = block.weight_and_logabsdet()
        inv2, _ = block.inverse_weight_and_logabsdet()
    ref_w, ref_logabsdet = fresh(block)
    assert not torch.equal(w2, w1)
    torch.testing.assert_close(w2, ref_w, atol=0, rtol=0)
    torch.testing.assert_close(logabsdet2, ref_logabsdet, atol=0, rtol=0)
    torch.testing.assert_close(inv2, torch.linalg.inv(ref_w.double()), atol=0, rtol=0)


def test_load_state_dict_and_copies_never_see_a_stale_weight() -> None:
    torch.manual_seed(0)
    a, b = InvConv1x1(4), InvConv1x1(4)
    with torch.no_grad():
        a.weight_and_logabsdet()
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a.weight_and_logabsdet()[0], fresh(b)[0], atol=0, rtol=0)
        c = copy.deepcopy(a)
        for p in c.parameters():
            p.add_(0.1)
        assert not torch.equal(c.weight_and_logabsdet()[0], a.weight_and_logabsdet()[0])
        torch.testing.assert_close(c.weight_and_logabsdet()[0], fresh(c)[0], atol=0, rtol=0)


def test_inference_mode_round_trip_matches_the_uncached_block() -> None:
    torch.manual_seed(1)
    block = InvConv1x1(5)
    x = torch.randn(2, 5, 3, 3)
    ref_z, ref_ld = block(x)
    with torch.inference_mode():
        for _ in range(2):  # the second pass reads the cache
            z, ld = block(x)
            back, back_ld = block.inverse(z)
            torch.testing.assert_close(z, ref_z.detach(), atol=0, rtol=0)
            torch.testing.assert_close(ld, ref_ld.detach(), atol=0, rtol=0)
            torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
            torch.testing.assert_close(back_ld, -ld, atol=0, rtol=0)
