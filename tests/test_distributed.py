"""ActNorm's data-dependent init is identical on every DDP rank (gloo on CPU)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from msflow.transforms import ActNorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # each rank sees different data
        x = torch.randn(8, 3, 4, 4) * (rank + 1) + rank
        norm = ActNorm(3)
        norm(x)
        torch.save({"bias": norm.bias.detach(), "log_scale": norm.log_scale.detach(), "x": x}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed support")
def test_actnorm_init_is_identical_across_ranks_and_uses_global_statistics(tmp_path):
    world = 2
    mp.spawn(_rank_main, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert torch.equal(states[0]["bias"], states[1]["bias"])
    assert torch.equal(states[0]["log_scale"], states[1]["log_scale"])
    # The shared statistics are those of all ranks' data together, not of either rank alone.
    everything = torch.cat([s["x"] for s in states]).transpose(0, 1).reshape(3, -1).double()
    mean, std = everything.mean(1), everything.std(1, unbiased=False)
    assert torch.allclose(states[0]["bias"].flatten().double(), -mean, atol=1e-5)
    assert torch.allclose(states[0]["log_scale"].flatten().double(), -std.log(), atol=1e-5)
