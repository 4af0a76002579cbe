"""Does ``torch.compile`` (inductor) make msflow faster on the CPU? Eager against compiled, same weights.

Contestants, each timed against eager msflow in the same process, interleaved:

- ``glow/model``: the peer benchmark's Glow (``peers.py``'s msflow, float32) with its whole density
  (``log_prob_continuous``) and its whole inverse (``decode``) passed to ``torch.compile``; dynamo
  splits them where Python decides (ActNorm's initialisation flag, the 1x1 convolutions' weight
  cache), and inductor fuses what lies between (ActNorm, coupling arithmetic, log-det sums);
- ``glow/subnets``: only the coupling networks compiled (``Module.compile`` on each): inductor's
  convolution + ReLU fusion, the rest eager;
- ``cnf/field``: the vector field of ``cnf_peers.py``'s CNF level compiled (``Module.compile``);
  evaluation and sampling (training needs the divergence's double backward, which compiled
  autograd graphs do not support: recorded as such if it fails).

Phases: ``train`` (forward, backward, Adam step; Glow only), ``eval`` (log-density of a fixed
dequantized batch), ``sample`` (the inverse of fixed latents). Every repeat times eager and
compiled back to back (alternating which goes first); the paired ratio eager / compiled (> 1:
compiled faster) is reported as the median with its range over the repeats. Compilation time is
excluded from the ratios and recorded. The outputs are compared at equal weights: bits/dim
differences (eager vs compiled) are reported, since inductor reorders floating-point sums.

Usage::

    python benchmarks/compiled.py --json docs/results/compile-cpu.json   # ~10 CPU minutes (compilation)
    python benchmarks/compiled.py --smoke                                # tiny models (tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _memory  # noqa: E402, F401  (tunes the allocator as msflow's entry points do)
import peers  # noqa: E402


def _bpd(log_p: Tensor, num_dims: int) -> Tensor:
    return -(log_p - num_dims * math.log(256)) / (num_dims * math.log(2))


def glow_pair(workload: str, preset: str, variant: str) -> tuple[dict[str, Callable], dict[str, Callable], dict]:
    """Eager and compiled phase functions of one Glow (the compiled one a deep copy, same weights)."""
    cfg = peers.make_config(preset, workload)
    c = peers.build_contestant("msflow", cfg)
    batches = peers.make_batches(cfg)
    c.initialize(batches[0])  # ActNorm's data-dependent init, before copying
    eager = c.model
    model = copy.deepcopy(eager)
    if variant == "model":
        density, inverse = torch.compile(model.log_prob_continuous), torch.compile(model.decode)
    else:
        for m in model.modules():
            if hasattr(m, "net") and isinstance(m.net, nn.Sequential):
                m.net.compile()
        density, inverse = model.log_prob_continuous, model.decode
    gen = torch.Generator().manual_seed(cfg.seed)
    v = (batches[0].float() + torch.rand(batches[0].shape, generator=gen)) / 256
    zs = [torch.randn(cfg.batch, *s, generator=gen) for s in eager.latent_shapes()]
    num_dims = math.prod(cfg.image_shape)

    def phases(m: nn.Module, dens: Callable, inv: Callable) -> dict[str, Callable]:
        opt = torch.optim.Adam(m.parameters(), lr=0.0)  # lr 0: the weights stay equal for the checks

        def train() -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = _bpd(dens(v), num_dims).mean()
            loss.backward()
            opt.step()
            return loss.detach()

        def evaluate() -> Tensor:
            with torch.no_grad():
                return _bpd(dens(v), num_dims)

        def sample() -> Tensor:
            with torch.no_grad():
                return inv(zs)

        return {"train": train, "eval": evaluate, "sample": sample}

    return (
        phases(eager, eager.log_prob_continuous, eager.decode),
        phases(model, density, inverse),
        {
            "workload": workload,
            "batch": cfg.batch,
        },
    )


def cnf_pair(preset: str) -> tuple[dict[str, Callable], dict[str, Callable], dict]:
    """Eager and field-compiled phase functions of ``cnf_peers.py``'s msflow CNF level."""
    import cnf_peers

    cfg = cnf_peers.PRESETS["smoke" if preset == "smoke" else "full"]
    eager, _ = cnf_peers.build_pair(cfg)
    compiled, _ = cnf_peers.build_pair(cfg)  # seeded: the same weights
    (cnf,) = cnf_peers.cnf_blocks(compiled.model)
    cnf.field.compile()
    inputs = cnf_peers.Inputs.from_batches(cnf_peers.make_batches(cfg), cfg.seed, "cpu")
    num_dims = math.prod(cfg.image_shape)

    def phases(c: Any) -> dict[str, Callable]:
        def train() -> Tensor:
            c.model.train()
            c.optimizer.zero_grad(set_to_none=True)
            loss = _bpd(c.log_prob(inputs.v[0]), num_dims).mean()
            loss.backward()
            return loss.detach()

        def evaluate() -> Tensor:
            c.model.eval()
            with torch.no_grad():
                return _bpd(c.log_prob(inputs.v[0]), num_dims)

        def sample() -> Tensor:
            c.model.eval()
            with torch.no_grad():
                return c.sample(inputs.eps[0])

        return {"train": train, "eval": evaluate, "sample": sample}

    return phases(eager), phases(compiled), {"workload": f"cnf {cfg.image_shape}", "batch": cfg.batch}


def compare(eager: dict[str, Callable], compiled: dict[str, Callable], repeats: int, warmup: int) -> dict[str, Any]:
    """Per phase: compile seconds, eager and compiled ms (interleaved), paired ratios, output differences."""
    out: dict[str, Any] = {}
    for phase in eager:
        start = time.perf_counter()
        try:
            torch.manual_seed(0)
            got = compiled[phase]()
        except Exception as err:  # noqa: BLE001  (a phase inductor cannot compile is a result, not a crash)
            out[phase] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            continue
        compile_s = time.perf_counter() - start
        torch.manual_seed(0)
        want = eager[phase]()
        for _ in range(warmup):
            eager[phase]()
            compiled[phase]()
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for r in range(repeats):
            order = [("eager", eager), ("compiled", compiled)]
            for name, fns in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fns[phase]()
                times[name].append((time.perf_counter() - t0) * 1e3)
        paired = [e / c for e, c in zip(times["eager"], times["compiled"], strict=True)]
        out[phase] = {
            "compile_s": compile_s,
            "eager_ms": statistics.median(times["eager"]),
            "compiled_ms": statistics.median(times["compiled"]),
            "speedup": statistics.median(paired),
            "speedup_min": min(paired),
            "speedup_max": max(paired),
            "samples": times,
            "max_abs_difference": (want.double() - got.double()).abs().max().item(),
            "difference_is": "bits/dim" if phase != "sample" else "sampled v",
        }
    return out


def run(preset: str, repeats: int, warmup: int, parts: list[str]) -> dict[str, Any]:
    env = peers.environment("cpu") | {"loadavg_before": list(os.getloadavg())}
    results = {}
    from torch._dynamo.utils import counters

    for part in parts:
        print(f"compiling {part} ...", file=sys.stderr, flush=True)
        if part == "cnf/field":
            eager, compiled, info = cnf_pair(preset)
        else:
            eager, compiled, info = glow_pair("mnist", preset, part.split("/")[1])
        graphs = counters["stats"]["unique_graphs"]
        phases = compare(eager, compiled, repeats, warmup)
        results[part] = info | {
            "phases": phases,
            "graphs_compiled": counters["stats"]["unique_graphs"] - graphs,  # > 0: inductor did run
            "loadavg": list(os.getloadavg()),
        }
    env["loadavg_after"] = list(os.getloadavg())
    return {"environment": env, "repeats": repeats, "results": results}


def markdown_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"torch.compile (inductor) against eager msflow, {peers._hardware(env)}; torch {env['torch']}; "
        f"load average {env['loadavg_before'][0]:.2f} -> {env['loadavg_after'][0]:.2f}; {report['repeats']} "
        "interleaved repeats:",
        "",
        "| what is compiled | workload, batch | phase | eager ms | compiled ms | **eager / compiled** [range] "
        "| compile s | largest difference |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for part, r in report["results"].items():
        for phase, p in r["phases"].items():
            label = f"{part} ({r['graphs_compiled']} graphs)" if "graphs_compiled" in r else part
            if "error" in p:
                lines.append(
                    f"| {label} | {r['workload']}, {r['batch']} | {phase} | - | - | fails: {p['error']} | - | - |"
                )
                continue
            lines.append(
                f"| {label} | {r['workload']}, {r['batch']} | {phase} | {p['eager_ms']:.1f} | {p['compiled_ms']:.1f} "
                f"| **{p['speedup']:.2f}** [{p['speedup_min']:.2f}-{p['speedup_max']:.2f}] | {p['compile_s']:.0f} "
                f"| {p['max_abs_difference']:.1e} {p['difference_is']} |"
            )
    lines += ["", "Above 1: compiled is faster. Compilation time is not in the ratios."]
    return "\n".join(lines)


PARTS = ("glow/model", "glow/subnets", "cnf/field")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models (tests)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.smoke else args.threads)
    report = run("smoke" if args.smoke else "full", args.repeats, args.warmup, args.parts)
    print(markdown_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
