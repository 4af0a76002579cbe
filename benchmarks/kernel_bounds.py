"""Kernel bounds: the largest speed ratio against the peers that *any* Glow of their architecture can reach here.

Every step of ``peers.py``'s Glow runs one coupling network (conv 3x3 -> ReLU -> conv 1x1 -> ReLU
-> conv 3x3, 128 wide), and training adds Adam's update of all the weights. No implementation of
this architecture can skip that work, whatever it does with the rest (ActNorm, the invertible 1x1
convolutions, the coupling arithmetic, log-dets, priors). This script times that irreducible part
on its own and divides the peers' step time by it::

    bound(phase) = t_peer(phase) / (sum over couplings c of t_alone(c, phase)  [+ t_adam when training])

- ``t_alone``: one coupling network run alone, a copy of the msflow model's own network at its own
  input shape, with channels-last weights and input (oneDNN's fastest layout) and the same tensor
  every call (so it stays in cache). Forward only under ``torch.inference_mode`` for evaluation
  and sampling (sampling runs the same networks, in the inverse); forward + backward for training
  (the input needs its gradient, as inside a flow); float32, or bf16 autocast for ``bf16-mixed``.
- ``t_adam``: ``torch.optim.Adam.step`` over tensors shaped like the model's parameters.
- ``t_peer``: normflows' and FrEIA's step, with ``peers.py``'s own models and step functions, each
  peer at its best: in-place ReLUs, the faster of its two layouts, bf16 autocast for ``bf16-mixed``.

In each timed repeat msflow, the peers (in alternating order) and then the isolated networks run
back to back; a row's ratios are medians over repeats of that repeat's ratio, so they see one
state of this noisy machine's load. The bound assumes a hot cache and zero cost for everything
outside the coupling networks: a target above it is out of reach with PyTorch's kernels on this
machine, not merely unreached. The report puts each target of the speed issue next to msflow's
measured ratio and the bound.

Usage::

    python benchmarks/kernel_bounds.py --json docs/results/kernel-bounds-cpu.json  # ~3 min on 2 idle cores
    python benchmarks/kernel_bounds.py --quick   # fewer repeats: ~1 min
    python benchmarks/kernel_bounds.py --smoke   # tiny models, seconds (the tests)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from peers import (
    PEERS,
    PHASES,
    STEPS,
    WORKLOADS,
    BenchConfig,
    _hardware,
    build_contestant,
    contestant_specs,
    environment,
    make_batches,
    make_config,
    parse_spec,
)
from torch import Tensor, nn

# (phase, precision) -> the speed ratio against each peer at its best that issue 23 asks for
# (float32 against float32, bf16-mixed against the peer under bf16 autocast).
TARGETS: dict[tuple[str, str], float] = {
    (phase, precision): 1.3 for precision in ("float32", "bf16-mixed") for phase in ("train", "eval", "sample")
}
SPECS = {"float32": "msflow", "bf16-mixed": "msflow[bf16-mixed]"}


def coupling_networks(model: nn.Module, x: Tensor) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Each coupling network of ``model`` with the input shape it sees on the uint8 batch ``x``."""
    from msflow.transforms.coupling import AdditiveCoupling, AffineCoupling

    nets = [m.net for m in model.modules() if isinstance(m, AffineCoupling | AdditiveCoupling)]
    shapes: dict[int, tuple[int, ...]] = {}

    def recorder(i: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(i, tuple(args[0].shape))  # returns None: the input goes on unchanged

        return record

    hooks = [net.register_forward_pre_hook(recorder(i)) for i, net in enumerate(nets)]
    try:
        with torch.inference_mode():
            model.bits_per_dim(x)
    finally:
        for h in hooks:
            h.remove()
    if len(shapes) != len(nets):
        raise RuntimeError(f"only {len(shapes)} of {len(nets)} coupling networks ran on the batch")
    return [(net, shapes[i]) for i, net in enumerate(nets)]


# The issue's figures for the machine it assumed (an AMX CPU, 2 threads), in GFLOP/s.
ISSUE_PEAKS = {"matmul": {"float32": 117.0, "bf16": 930.0}, "conv": {"float32": 175.0, "bf16": 720.0}}


def peak_gflops(side: int = 2048, batch: int = 64, repeats: int = 10) -> dict[str, dict[str, float]]:
    """This machine's float32 and bf16 speed on the issue's two yardsticks, in GFLOP/s.

    A ``side`` x ``side`` matmul, and a 3x3 128->128 convolution at 16x16 (batch ``batch``,
    channels-last, forward): the shapes whose float32 / bf16 speeds the speed issue quotes for the
    machine it assumed (``ISSUE_PEAKS``), on which its bf16 target rests.
    """
    out: dict[str, dict[str, float]] = {"matmul": {}, "conv": {}}
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
        x = torch.randn(batch, 128, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 128, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        work = {
            "matmul": (functools.partial(torch.matmul, a, b), 2 * side**3),
            "conv": (functools.partial(F.conv2d, x, w, padding=1), 2 * batch * 128 * 128 * 9 * 16 * 16),
        }
        for kind, (fn, flops) in work.items():
            fn()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            out[kind][name] = flops / ((time.perf_counter() - start) / repeats) / 1e9
    return out


class NetworkWork:
    """One call of a copy of ``net`` as the flow makes it in ``phase``: forward only, or forward + backward.

    The copy has channels-last weights and a channels-last random input of ``shape`` (oneDNN's
    fastest layout); for training the input needs its gradient, as a coupling's input does inside
    a flow, and the output is cast back to float32 before the backward, as ``run_subnet`` does.
    """

    def __init__(self, net: nn.Module, shape: tuple[int, ...], phase: str, precision: str) -> None:
        self.net = copy.deepcopy(net).to(memory_format=torch.channels_last)
        self.x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        self.train = phase == "train"
        self.x.requires_grad_(self.train)
        self.dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        self.grad: Tensor | None = None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cpu", dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def __call__(self) -> None:
        if not self.train:
            with torch.inference_mode(), self._autocast():
                self.net(self.x)
            return
        # Fresh gradients every call, as after the flow's ``zero_grad(set_to_none=True)``.
        self.x.grad = None
        for p in self.net.parameters():
            p.grad = None
        with self._autocast():
            out = self.net(self.x)
        out = out.float()
        if self.grad is None:
            self.grad = torch.randn_like(out)
        out.backward(self.grad)


class IsolatedNetworks:
    """The irreducible work of one batch, per (phase, precision): every coupling network, run alone.

    The networks at one level differ only in their weights, so one copy per input shape is timed
    and counted once per coupling at that shape. Training adds ``Adam.step`` over tensors shaped
    like the model's parameters. Sampling runs the same networks as evaluation (in the inverse).
    """

    def __init__(self, model: nn.Module, x: Tensor, cfg: BenchConfig) -> None:
        nets = coupling_networks(model, x)
        self.iters = cfg.iters
        self.counts: dict[tuple[int, ...], int] = {}
        first: dict[tuple[int, ...], nn.Module] = {}
        for net, shape in nets:
            self.counts[shape] = self.counts.get(shape, 0) + 1
            first.setdefault(shape, net)
        self.works = {
            (phase, precision): {s: NetworkWork(net, s, phase, precision) for s, net in first.items()}
            for phase in ("train", "eval")
            for precision in SPECS
        }
        params = [torch.zeros_like(p, requires_grad=True) for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        self.adam = torch.optim.Adam(params, lr=cfg.lr)

    def time_ms(self, phase: str, precision: str) -> dict[str, float]:
        """One timing of a batch's irreducible work: ``iters`` calls per shape, mean per call, summed."""
        works = self.works["train" if phase == "train" else "eval", precision]
        networks = 0.0
        for shape, work in works.items():
            start = time.perf_counter()
            for _ in range(self.iters):
                work()
            networks += (time.perf_counter() - start) / self.iters * 1e3 * self.counts[shape]
        adam = 0.0
        if phase == "train":
            start = time.perf_counter()
            for _ in range(self.iters):
                self.adam.step()
            adam = (time.perf_counter() - start) / self.iters * 1e3
        return {"networks_ms": networks, "adam_ms": adam, "ms_per_batch": networks + adam}


def timed_rounds(
    cfg: BenchConfig, contestants: list[Any], batches: list[Tensor], isolated: IsolatedNetworks
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[dict[str, float]]]]:
    """ms per batch of every contestant and of the isolated networks, repeat by repeat.

    In each repeat the contestants (in alternating order) and then the isolated networks of that
    phase run back to back, so a repeat's ratios see one state of the machine's load.
    """
    steps: dict[str, dict[str, list[float]]] = {c.name: {p: [] for p in PHASES} for c in contestants}
    alone: dict[str, list[dict[str, float]]] = {f"{p}/{prec}": [] for p in PHASES for prec in SPECS}
    for phase in PHASES:
        step = STEPS[phase]
        for c in contestants:
            for i in range(cfg.warmup):
                step(c, batches[i % len(batches)])
        for precision in SPECS:
            for _ in range(cfg.warmup):
                isolated.time_ms(phase, precision)
        for r in range(cfg.repeats):
            for c in contestants if r % 2 == 0 else contestants[::-1]:
                start = time.perf_counter()
                for i in range(cfg.iters):
                    step(c, batches[(r * cfg.iters + i) % len(batches)])
                steps[c.name][phase].append((time.perf_counter() - start) / cfg.iters * 1e3)
            for precision in SPECS:
                alone[f"{phase}/{precision}"].append(isolated.time_ms(phase, precision))
    return steps, alone


def run_workload(cfg: BenchConfig, layouts: str = "both") -> dict[str, Any]:
    """msflow, the peers and the isolated coupling networks of msflow's model, timed in paired repeats.

    Each peer runs in ``layouts`` (both by default) and in both precisions; a row compares msflow
    with the peer's faster layout in that phase and precision (float32 vs float32, bf16 vs bf16).
    """
    batches = make_batches(cfg)
    specs = contestant_specs(list(SPECS), layouts)
    contestants = [build_contestant(s, cfg) for s in specs]
    for c in contestants:
        c.initialize(batches[0])
    isolated = IsolatedNetworks(contestants[0].model, batches[0], cfg)
    steps, alone = timed_rounds(cfg, contestants, batches, isolated)
    med = statistics.median
    rows = []
    for (phase, precision), target in TARGETS.items():
        ours = steps[SPECS[precision]][phase]
        bound_ms = [a["ms_per_batch"] for a in alone[f"{phase}/{precision}"]]
        for peer in PEERS:
            candidates = [s for s in specs if parse_spec(s)[:2] == (peer, precision)]
            spec = min(candidates, key=lambda s: med(steps[s][phase]))
            theirs = steps[spec][phase]
            bounds = [p / b for p, b in zip(theirs, bound_ms, strict=True)]
            measured = [p / o for p, o in zip(theirs, ours, strict=True)]
            rows.append(
                {
                    "phase": phase,
                    "precision": precision,
                    "peer": peer,
                    "peer_spec": spec,
                    "target": target,
                    "measured": med(measured),
                    "measured_min": min(measured),
                    "measured_max": max(measured),
                    "bound": med(bounds),
                    "bound_min": min(bounds),
                    "bound_max": max(bounds),
                    "fraction_of_bound": med(m / b for m, b in zip(measured, bounds, strict=True)),
                    "peer_ms_per_batch": med(theirs),
                    "msflow_ms_per_batch": med(ours),
                    "bound_ms_per_batch": med(bound_ms),
                    "reachable": med(bounds) >= target,
                }
            )
    summary = {
        key: {part: med(t[part] for t in timings) for part in ("networks_ms", "adam_ms", "ms_per_batch")}
        | {"samples": timings}
        for key, timings in alone.items()
    }
    shapes = {"x".join(map(str, s)): n for s, n in isolated.counts.items()}
    return {
        "config": dataclasses.asdict(cfg),
        "ms_per_batch": steps,
        "isolated": summary,
        "networks_per_shape": shapes,
        "rows": rows,
    }


def _spread(row: dict[str, Any], key: str) -> str:
    """`` [min-max]`` of a row's ratio over the repeats (rows before issue 23 have none)."""
    return f" [{row[key + '_min']:.2f}-{row[key + '_max']:.2f}]" if key + "_min" in row else ""


def markdown_table(report: dict[str, Any]) -> str:
    """One row per (workload, phase, precision, peer)."""
    lines = [f"Hardware: {_hardware(report['environment'])}; torch {report['environment']['torch']}.", ""]
    if "peaks" in report:
        lines += [
            "| yardstick (2 threads) | float32 GFLOP/s | bf16 GFLOP/s | bf16 / float32 | "
            "the issue's machine: float32 / bf16 |",
            "|---|---:|---:|---:|---|",
        ]
        names = {"matmul": "2048 x 2048 matmul", "conv": "3x3 128->128 conv, 16x16, batch 64, channels-last"}
        for kind, speed in report["peaks"].items():
            issue = ISSUE_PEAKS[kind]
            lines.append(
                f"| {names[kind]} | {speed['float32']:.0f} | {speed['bf16']:.0f} | "
                f"{speed['bf16'] / speed['float32']:.2f} | {issue['float32']:.0f} / {issue['bf16']:.0f} "
                f"({issue['bf16'] / issue['float32']:.1f}x) |"
            )
        lines.append("")
    lines += [
        "| workload | phase | precision | peer (layout) | target | msflow measured [range] | **bound** [range] | "
        "measured / bound | msflow ms/batch | bound ms/batch (networks + Adam) | peer ms/batch | target reachable? |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, w in report["workloads"].items():
        for r in w["rows"]:
            iso = w["isolated"][f"{r['phase']}/{r['precision']}"]
            split = f"{iso['networks_ms']:.1f}" + (f" + {iso['adam_ms']:.1f}" if iso["adam_ms"] else "")
            spec = r.get("peer_spec", r["peer"])
            layout = "channels-last" if spec.endswith("+cl") else "contiguous"
            fraction = f"{r['fraction_of_bound']:.2f}" if "fraction_of_bound" in r else "-"
            lines.append(
                f"| {name} | {r['phase']} | {r['precision']} | {r['peer']} ({layout}) | {r['target']:.1f} | "
                f"{r['measured']:.2f}{_spread(r, 'measured')} | "
                f"**{r['bound']:.2f}**{_spread(r, 'bound')} | {fraction} | "
                f"{r['msflow_ms_per_batch']:.1f} | {split} | {r['peer_ms_per_batch']:.1f} | "
                f"{'yes' if r['reachable'] else 'no'} |"
            )
    lines += [
        "",
        "Bound = the peer's ms per batch / the coupling networks' ms run alone (+ Adam's step when training), "
        "median over paired repeats: the best ratio an implementation could reach if everything else in a "
        "step cost nothing. Measured: msflow's ratio in the same repeats; [range] over the repeats. Each peer in "
        "its faster layout for that phase and precision; bf16-mixed rows: msflow's bf16 subnets against the "
        "peer under bf16 autocast, bound by the networks under bf16 autocast. Sampling is bounded by the same "
        "networks as evaluation (run in the inverse).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repeats (~1 minute on 2 idle CPU cores)")
    size.add_argument("--smoke", action="store_true", help="tiny models, one step (tests)")
    parser.add_argument("--shape", default="all", choices=[*WORKLOADS, "all"], help="workload(s)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; 1 with --smoke)")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument(
        "--peer-layouts", default="both", choices=["both", "contiguous", "channels_last"], help="as peers.py's"
    )
    args = parser.parse_args(argv)

    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    shapes = list(WORKLOADS) if args.shape == "all" else [args.shape]
    overrides = {"threads": args.threads} if args.threads else {}
    cfgs = [make_config(preset, s, "cpu", **overrides) for s in shapes]
    torch.set_num_threads(cfgs[0].threads)
    env = environment("cpu") | {"loadavg_before": list(os.getloadavg()), "peer_layouts": args.peer_layouts}
    start = time.perf_counter()
    workloads = {cfg.workload: run_workload(cfg, args.peer_layouts) for cfg in cfgs}
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    report = {"environment": env, "workloads": workloads}
    if not args.smoke:
        report["peaks"] = peak_gflops()
    print(markdown_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    unreachable = sorted(
        {f"{r['phase']}/{r['precision']}" for w in workloads.values() for r in w["rows"] if not r["reachable"]}
    )
    if unreachable:
        print(f"\nTargets beyond the kernel bound on this machine: {', '.join(unreachable)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
