"""Markdown tables of a ``peers.py`` report (the JSON it writes), for its output and the READMEs.

``scripts/render_tables.py`` renders README blocks with these functions from the committed JSON,
so every figure in those tables comes from a measurement:

- :func:`summary_table`: the headline ratios, float32 vs float32 and bf16 vs bf16, per workload and
  phase, with their spread over the interleaved repeats;
- :func:`memory_table`: extra resident memory per phase and contestant;
- :func:`markdown_table`: everything (what ``peers.py`` prints).

Contestant names are ``lib``, ``lib[bf16-mixed]``, optionally ``+cl`` for a peer run channels-last.
"""

from __future__ import annotations

from typing import Any

PHASES = ("train", "eval", "sample")
PEER_LABELS = {"normflows": "normflows", "freia": "FrEIA"}
PRECISION_LABELS = {"msflow": "float32", "msflow[bf16-mixed]": "bf16-mixed"}


def _peer_of(spec: str) -> str:
    return spec.split("[")[0].split("+")[0]


def _layout(spec: str) -> str:
    return "channels-last" if spec.endswith("+cl") else "contiguous"


def _fmt_rate(t: dict[str, Any]) -> str:
    return f"{t['median']:.1f} [{t['min']:.0f}-{t['max']:.0f}]"


def _fmt_ratio(r: dict[str, Any]) -> str:
    """Paired ratio (median over repeats) and its range over the repeats (reports before issue 23: no range)."""
    spread = f" [{r['paired_min']:.2f}-{r['paired_max']:.2f}]" if "paired_min" in r else ""
    return f"**{r['throughput_paired']:.2f}**{spread}"


def _peer_spec(r: dict[str, Any], peer: str) -> str:
    return r.get("peer_spec", peer)


def _at_best(report: dict[str, Any]) -> bool:
    """Whether the peers ran at their best (layouts tried, bf16 autocast): reports since issue 23."""
    return "peer_layouts" in report["environment"]


def _hardware(env: dict[str, Any]) -> str:
    if "gpu" in env:
        return (
            f"{env['gpu']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), TF32 allowed for every contestant "
            f"(matmul {env['tf32_matmul']}, cuDNN {env['tf32_cudnn']}), cuDNN benchmark {env['cudnn_benchmark']}; "
            f"host {env['cpu']}"
        )
    units = ", ".join(env["cpu_bf16_units"]) or "none"
    features = env.get("cpu_features")
    amx = "" if features is None else f", AMX {'yes' if features.get('amx_bf16') else 'no'}"
    return f"{env['cpu']}, bf16 units: {units}{amx}; {env['threads']} torch threads"


def header(report: dict[str, Any]) -> str:
    """Versions, hardware, load and duration of the run."""
    env = report["environment"]
    return (
        f"msflow {env['msflow']} vs normflows {env['normflows']} and FrEIA {env['FrEIA']}; torch {env['torch']}; "
        f"device {env['device']}: {_hardware(env)}; load average {env['loadavg_before'][0]:.2f} -> "
        f"{env['loadavg_after'][0]:.2f}; {env['wall_s']:.0f} s"
    )


def _shape(cfg: dict[str, Any]) -> str:
    return f"{'x'.join(map(str, cfg['image_shape']))}, {cfg['levels']} levels"


def summary_table(report: dict[str, Any]) -> str:
    """Headline: msflow / peer at its best layout, float32 vs float32 and bf16-mixed vs bf16 autocast."""
    workloads = report["workloads"]
    any_w = next(iter(workloads.values()))
    variants = list(any_w["ratios"])
    peers_at = "" if _at_best(report) else " (peers float32)"
    head = ["workload", "phase"] + [
        f"{PRECISION_LABELS.get(v, v)}{peers_at if v != 'msflow' else ''}: vs {PEER_LABELS[p]}"
        for v in variants
        for p in any_w["ratios"][v]
    ]
    lines = [
        header(report) + f"; {any_w['config']['repeats']} interleaved repeats x {any_w['config']['iters']} step(s), "
        f"batch {any_w['config']['batch']}:",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(head) - 2),
    ]
    for w in workloads.values():
        for i, phase in enumerate(PHASES):
            cells = [
                _fmt_ratio(r) + (" cl" if _peer_spec(r, p).endswith("+cl") else "")
                for v in variants
                for p in w["ratios"][v]
                for r in [w["ratios"][v][p][phase]]
            ]
            lines.append("| " + " | ".join([_shape(w["config"]) if i == 0 else "", phase, *cells]) + " |")
    best = (
        "Each peer in its faster layout for that phase and precision (cl: channels-last, else contiguous); "
        "bf16-mixed columns: the peers under torch.autocast(bfloat16)."
        if _at_best(report)
        else "A run from before the peers were tried channels-last and under bf16 autocast: peers contiguous, float32."
    )
    lines += [
        "",
        "msflow img/s / peer img/s (above 1: msflow faster): median over the repeats of the ratio within a "
        f"repeat (both ran back to back), [lowest-highest] over the repeats. {best}",
    ]
    return "\n".join(lines)


def memory_table(report: dict[str, Any]) -> str:
    """Extra resident memory (MiB) of each phase, msflow variants and the peers' timed-best layouts."""
    workloads = report["workloads"]
    any_w = next(iter(workloads.values()))
    variants = list(any_w["ratios"])
    peer_variants = variants if _at_best(report) else variants[:1]  # before issue 23 the peers ran float32 only
    columns = [(v, None) for v in variants] + [(v, p) for v in peer_variants for p in any_w["ratios"][v]]

    def label(v: str, p: str | None) -> str:
        return f"{'msflow' if p is None else PEER_LABELS[p]} {PRECISION_LABELS.get(v, v)}"

    lines = [
        "| workload | phase | " + " | ".join(label(v, p) for v, p in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for w in workloads.values():
        if not w["memory"]:
            continue
        for i, phase in enumerate(PHASES):
            cells = []
            for v, p in columns:
                spec = v if p is None else _peer_spec(w["ratios"][v][p][phase], p)
                m = w["memory"].get(spec, {}).get(phase)
                cells.append("-" if m is None else f"{m['peak_delta_mib']:.0f}")
            lines.append("| " + " | ".join([_shape(w["config"]) if i == 0 else "", phase, *cells]) + " |")
    repeats = any_w["config"]["memory_repeats"]
    lines += [
        "",
        f"Extra resident memory of the phase in MiB (peak RSS minus RSS before, fresh process per contestant "
        f"and phase, median of {repeats}); the peers in the layout timed faster for that phase.",
    ]
    return "\n".join(lines)


def layout_table(name: str, w: dict[str, Any]) -> list[str]:
    """Each peer's img/s in both layouts (where both ran), and which one the ratios use."""
    thr = w["throughput"]
    pairs = sorted({s.removesuffix("+cl") for s in thr if s.endswith("+cl")})
    if not pairs:
        return []
    lines = [
        f"Peer layouts, {name} (img/s, median [min-max]; the ratios use the faster):",
        "",
        "| peer | phase | contiguous | channels-last | channels-last / contiguous |",
        "|---|---|---:|---:|---:|",
    ]
    for spec in pairs:
        for phase in PHASES:
            a, b = thr[spec][phase], thr[spec + "+cl"][phase]
            lines.append(f"| {spec} | {phase} | {_fmt_rate(a)} | {_fmt_rate(b)} | {b['median'] / a['median']:.2f} |")
    return [*lines, ""]


def workload_table(name: str, w: dict[str, Any]) -> list[str]:
    """One row per (phase, msflow variant, peer)."""
    cfg, thr, mem = w["config"], w["throughput"], w["memory"]
    params = ", ".join(f"{k} {v['params']:,}" for k, v in w["models"].items() if "+cl" not in k and "[" not in k)
    init = ", ".join(f"{k} {v['bpd_at_init']:.2f}" for k, v in w["models"].items())
    load = w.get("loadavg_timing")
    lines = [
        f"**{name}**: Glow {'x'.join(map(str, cfg['image_shape']))}, {cfg['levels']} levels x {cfg['steps']} steps, "
        f"hidden {cfg['hidden']}, batch {cfg['batch']}, data {cfg['data']}; {cfg['repeats']} repeats x "
        f"{cfg['iters']} step(s)"
        + (f"; load average {load[0][0]:.2f} -> {load[1][0]:.2f} while timing" if load else "")
        + f". Trainable parameters: {params}. Bits/dim at init: {init}.",
        "",
        "| phase | precision | peer (layout) | msflow img/s | peer img/s | speed ratio | **paired ratio** [range] "
        "| CPU-time ratio | msflow peak MiB | peer peak MiB | memory ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in PHASES:
        for variant, by_peer in w["ratios"].items():
            for peer, by_phase in by_peer.items():
                r = by_phase[phase]
                spec = _peer_spec(r, peer)
                m, b = mem.get(variant, {}).get(phase), mem.get(spec, {}).get(phase)
                mem_cols = (
                    f"{m['peak_delta_mib']:.0f} | {b['peak_delta_mib']:.0f} | {r['peak_memory']:.2f}"
                    if m and b
                    else "- | - | -"
                )
                lines.append(
                    f"| {phase} | {PRECISION_LABELS.get(variant, variant)} | {PEER_LABELS[peer]} ({_layout(spec)}) "
                    f"| {_fmt_rate(thr[variant][phase])} | {_fmt_rate(thr[spec][phase])} | {r['throughput']:.2f} "
                    f"| {_fmt_ratio(r)} | {r['cpu_throughput']:.2f} | {mem_cols} |"
                )
    return [*lines, "", *layout_table(name, w), arithmetic_line(cfg, w)]


def arithmetic_line(cfg: dict[str, Any], w: dict[str, Any]) -> str:
    """FLOPs per image, the speed each float32 contestant reaches in GFLOP/s, and the float32 reference."""
    flops = {name: m["flops_per_image"] for name, m in w["models"].items() if "flops_per_image" in m}
    if not flops:
        return ""
    per_phase = "; ".join(
        f"{phase}: "
        + ", ".join(
            f"{name} {flops[name][phase] / 1e9:.3f} GFLOP/image at "
            f"{flops[name][phase] * w['throughput'][name][phase]['median'] / 1e9:.0f} GFLOP/s"
            for name in flops
        )
        for phase in PHASES
    )
    side = cfg["image_shape"][1] // 2
    return (
        f"Arithmetic (torch FlopCounterMode) and the speed it ran at: {per_phase}. "
        f"Float32 reference on this device: a 3x3 {cfg['hidden']}->{cfg['hidden']} convolution at {side}x{side}, "
        f"batch {cfg['batch']}, channels-last, forward: {w['reference_conv_gflops']:.0f} GFLOP/s."
    )


def markdown_table(report: dict[str, Any]) -> str:
    """Header (versions, hardware, load), one table per workload, and the footnote."""
    env = report["environment"]
    any_cfg = next(iter(report["workloads"].values()))["config"]
    on_gpu = "gpu" in env
    lines = [header(report)]
    for name, w in report["workloads"].items():
        lines += ["", *workload_table(name, w)]
    memory = (
        "Peak MiB = CUDA memory allocated at the peak of the phase's steps minus the memory allocated before "
        "them (torch.cuda.max_memory_allocated, in the benchmark process, after one warm full-batch step)"
        if on_gpu
        else "Peak MiB = extra resident memory of the phase (peak RSS minus RSS before, fresh process per library "
        "and phase, after one small-batch step)"
    )
    differences = report.get("differences", {})
    lines += [
        "",
        "Speed ratio = median msflow img/s / median peer img/s (> 1: msflow faster); [min-max] over the "
        f"interleaved repeats, {any_cfg['warmup']} warm-up step(s) excluded. Paired ratio: median over repeats of "
        "the ratio within a repeat (all ran back to back), [lowest-highest] over the repeats. Each peer is "
        "compared in its faster layout for that phase and precision. "
        f"{memory}; median of {any_cfg['memory_repeats']} measurement(s); memory ratio < 1: msflow uses less. "
        "CPU-time ratio: the same ratio on images per CPU-second of the process.",
        *(f"- {k}: {v}" for k, v in differences.items()),
    ]
    return "\n".join(lines)
