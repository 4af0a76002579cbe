"""benchmarks/scaling.py at a tiny size: it runs, and its report, table and plot have the promised shape.

Times are never compared: they depend on the machine and its load.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
import torch
from bench_scripts import load_script

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scaling() -> ModuleType:
    return load_script("scaling")


@pytest.fixture(scope="module")
def smoke_run(scaling: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--smoke`` run (the only slow part of this file): its report, table and plot path."""
    out = tmp_path_factory.mktemp("scaling")
    threads = torch.get_num_threads()
    try:
        code = scaling.main(["--smoke", "--json", str(out / "scaling.json"), "--plot", str(out / "scaling.png")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return {"report": json.loads((out / "scaling.json").read_text()), "plot": out / "scaling.png"}


def test_smoke_report_has_every_family_side_and_phase(scaling: ModuleType, smoke_run: dict[str, Any]) -> None:
    report = smoke_run["report"]
    cfg = scaling.PRESETS["smoke"]
    sides = {scaling.parse_point(p)[0] for p in cfg.points}
    records = report["records"]
    for family in scaling.FAMILIES:
        for side in sides:
            for phase in scaling.PHASES:
                found = [r for r in records if (r["family"], r["side"], r["phase"]) == (family, side, phase)]
                assert len(found) == 1, (family, side, phase)
                t, m = found[0]["time"], found[0]["memory"]
                assert t["median"] > 0 and t["per_image_ms"] > 0 and t["cpu_median"] > 0
                assert len(t["samples"]) == cfg.repeats
                assert m["peak_delta_mib"] > 0 and m["peak_rss_mib"] >= m["rss_before_mib"] > 0
            model = report["models"][family]["sides"][str(side)]
            assert model["params"] > 0 and model["levels"] == scaling.levels_for(side)
    # Only MRCNF solves ODEs; its function evaluations are counted per call.
    assert all((r["time"]["nfe_per_call"] is None) == (r["family"] == "glow") for r in records)
    assert all(r["time"]["nfe_per_call"] > 0 for r in records if r["family"] == "mrcnf")


def test_smoke_report_has_the_checkpointed_training_point(scaling: ModuleType, smoke_run: dict[str, Any]) -> None:
    records = smoke_run["report"]["records"]
    checkpointed = [p for p in scaling.PRESETS["smoke"].points if scaling.parse_point(p)[1]]
    assert checkpointed
    for family in scaling.FAMILIES:
        for point in checkpointed:
            side = scaling.parse_point(point)[0]
            train = [r for r in records if (r["family"], r["side"], r["phase"]) == (family, side, "train")]
            assert [r["checkpointing"] for r in train] == [True]
    # Checkpointing acts only in training: evaluation and sampling carry no setting.
    assert all(r["checkpointing"] is None for r in records if r["phase"] != "train")


def test_smoke_writes_a_png_plot(smoke_run: dict[str, Any]) -> None:
    data = smoke_run["plot"].read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_table_has_a_hardware_line_and_one_row_per_point(scaling: ModuleType, smoke_run: dict[str, Any]) -> None:
    table = scaling.markdown_table(smoke_run["report"])
    assert table.splitlines()[0].startswith("CPU: ")
    rows = [line for line in table.splitlines() if line.startswith(("| glow |", "| mrcnf |"))]
    assert len(rows) == len(scaling.FAMILIES) * len(scaling.PRESETS["smoke"].points)
    assert any("| yes |" in row for row in rows) and any("| no |" in row for row in rows)


def test_points_levels_and_phases(scaling: ModuleType) -> None:
    assert scaling.parse_point("128") == (128, False)
    assert scaling.parse_point("256c") == (256, True)
    for bad in ("100", "4", "c", "64x"):
        with pytest.raises(ValueError, match="power-of-two"):
            scaling.parse_point(bad)
    assert [scaling.levels_for(s) for s in (32, 64, 128, 256)] == [3, 4, 5, 6]
    cfg = scaling.PRESETS["full"]
    assert scaling.phases_of(cfg, "128c") == ("train",)  # its side is measured without checkpointing too
    assert scaling.phases_of(cfg, "256c") == scaling.PHASES


def test_models_grow_a_level_per_doubling(scaling: ModuleType) -> None:
    cfg = scaling.PRESETS["smoke"]
    for side in (16, 32):
        glow = scaling.build_model(cfg, "glow", side)
        mrcnf = scaling.build_model(cfg, "mrcnf", side)
        assert len(glow.latent_shapes()) == scaling.levels_for(side)
        assert mrcnf.num_resolutions == scaling.levels_for(side)
        assert glow.latent_shapes()[-1][1:] == (4, 4)  # the coarsest Glow latent keeps its size


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(scaling: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        scaling.main(["--smoke", "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err
