"""torch.compile: benchmarks/compiled.py at a tiny size, and msflow's opt-in compile_fields.

Both compile with inductor (tens of seconds on a CPU), so they are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_scripts import load_script

from msflow.nn.odefunc import ConvVectorField
from msflow.transforms.cnf import CNF, cnf_blocks, compile_fields

pytestmark = pytest.mark.slow


def test_compile_fields_keeps_the_log_density() -> None:
    torch.manual_seed(0)
    eager = CNF(ConvVectorField(1, hidden=(4,)))
    with torch.no_grad():
        for p in eager.field.parameters():
            p.add_(0.1 * torch.randn_like(p))  # off the zero init, so the field matters
    compiled = CNF(ConvVectorField(1, hidden=(4,)))
    compiled.load_state_dict(eager.state_dict())
    assert compile_fields(compiled) == len(cnf_blocks(compiled)) == 1
    x = torch.randn(2, 1, 4, 4)
    eager.eval()
    compiled.eval()
    torch.manual_seed(1)
    z, logdet = eager(x)
    torch.manual_seed(1)
    z_c, logdet_c = compiled(x)
    # Inductor reorders sums; the adaptive solver may then accept slightly different steps, so the
    # results agree to within the solver's tolerances, not bit for bit.
    assert torch.allclose(z_c, z, atol=1e-3) and torch.allclose(logdet_c, logdet, rtol=1e-3, atol=1e-3)


def test_compiled_benchmark_smoke(tmp_path: Path) -> None:
    pytest.importorskip("normflows")
    pytest.importorskip("FrEIA")
    bench = load_script("compiled")
    out = tmp_path / "compile.json"
    assert bench.main(["--smoke", "--repeats", "1", "--parts", "glow/model", "cnf/field", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"glow/model", "cnf/field"}
    for part in report["results"].values():
        for phase in part["phases"].values():
            if "error" not in phase:
                assert phase["eager_ms"] > 0 and phase["compiled_ms"] > 0
                assert phase["speedup_min"] <= phase["speedup"] <= phase["speedup_max"]
                assert phase["max_abs_difference"] < 1e-3
    assert "cpu_features" in report["environment"]
