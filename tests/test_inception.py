"""FID's Inception-v3 without torchvision: shapes, torchvision key names, weight files, `--inception`.

Only random weights are used: the official FID weights are not available here, so nothing in
this file checks the features or distances against reference FID numbers.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny import TINY

from msflow.analysis.temperature import FID_METRIC
from msflow.cli import main
from msflow.errors import MsflowError
from msflow.nn import FIDInception, inception_features, load_fid_inception

ROW = re.compile(r"^ +(\d+\.\d\d) +(\d+\.\d{4})$", re.M)


@pytest.fixture(scope="module")
def net() -> FIDInception:
    torch.manual_seed(0)
    net = FIDInception().eval()
    # He-initialised convolutions keep the activations' scale through the 94 layers, so the
    # random features (and distances) are not all ~0 as with PyTorch's default init.
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


@pytest.fixture(scope="module")
def weights(net: FIDInception, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(root / "w.safetensors"))
    torch.save(state, root / "w.pt")
    return {"safetensors": root / "w.safetensors", "pt": root / "w.pt"}


def test_forward_shape(net: FIDInception) -> None:
    with torch.inference_mode():
        y = net(torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert y.shape == (2, 2048) and torch.isfinite(y).all()


def test_grey_uint8_features(net: FIDInception) -> None:
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    f = inception_features(net, images, batch_size=2)
    assert f.shape == (3, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    # Grey is the same as its three-channel repeat, and the method is the function.
    assert torch.equal(f, net.features(images.repeat(1, 3, 1, 1), batch_size=2))
    with pytest.raises(MsflowError, match="uint8"):
        inception_features(net, images.float())


def test_torchvision_state_dict_names(net: FIDInception) -> None:
    state = net.state_dict()
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_1a_3x3.bn.running_mean": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "Mixed_7c.branch_pool.bn.bias": (192,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("AuxLogits.", "fc.")) for k in state)
    assert all(not m.conv.bias for m in net.modules() if hasattr(m, "conv") and isinstance(m.conv, torch.nn.Conv2d))
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}
    # torchvision's inception_v3 has 27,161,264 parameters; minus fc (2,049,000) and AuxLogits (3,326,696).
    assert sum(p.numel() for p in net.parameters()) == 21_785_568


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_weights_round_trip(net: FIDInception, weights: dict[str, Path], kind: str) -> None:
    loaded = load_fid_inception(weights[kind])
    assert not loaded.training
    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(inception_features(loaded, images), inception_features(net, images))


def test_extra_head_keys_are_ignored_and_counters_optional(net: FIDInception, tmp_path: Path) -> None:
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state |= {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    state["AuxLogits.conv0.conv.weight"] = torch.zeros(128, 768, 1, 1)
    torch.save(state, tmp_path / "fid.pth")
    load_fid_inception(tmp_path / "fid.pth")


def test_missing_unexpected_and_misshapen_keys(net: FIDInception, tmp_path: Path) -> None:
    state = dict(net.state_dict())
    del state["Mixed_6c.branch1x1.bn.running_mean"]
    path = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(MsflowError, match=r"missing keys: Mixed_6c\.branch1x1\.bn\.running_mean") as err:
        load_fid_inception(path)
    assert str(path) in str(err.value)

    state = dict(net.state_dict())
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 1, 3, 3)
    state["Mixed_8a.conv.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(MsflowError) as err:
        load_fid_inception(path)
    message = str(err.value)
    assert str(path) in message and "Conv2d_1a_3x3.conv.weight (32, 1, 3, 3) (expected (32, 3, 3, 3))" in message
    assert "unexpected keys: Mixed_8a.conv.weight" in message

    with pytest.raises(MsflowError, match="not found"):
        load_fid_inception(tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MsflowError, match="junk.safetensors"):
        load_fid_inception(tmp_path / "junk.safetensors")


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _touch, (str(self.marker),)


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _Payload(marker)}, path)
    with pytest.raises(MsflowError, match="weights-only") as err:
        load_fid_inception(path)
    assert str(path) in str(err.value) and not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_cli_prints_an_fid_table(weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Unlabelled 8x8 images with a small test split: FID needs no labels, and Inception at
    # 299x299 on a CPU is slow, so every image set here stays small.
    g = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, count in (("train", 16), ("test", 4)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / split / f"{i:02d}.png")
    run = tmp_path / "run"
    overrides = [*TINY, "data.name=folder", f"data.root={root}", "train.steps=1", "train.batch_size=8"]
    assert main(["train", "mnist5k-glow", *overrides, "--out", str(run)]) == 0
    capsys.readouterr()
    png, js = tmp_path / "fid.png", tmp_path / "fid.json"
    argv = ["temperature", str(run), "--inception", str(weights["safetensors"]), "-n", "3"]
    argv += ["--temperatures", "0.5", "1", "-o", str(png), "--json", str(js), "--cache-dir", str(tmp_path / "cache")]
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    except Exception:  # noqa: BLE001 - show the crash in the assertion message
        rc = 1
        traceback.print_exc()
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert FID_METRIC in out and re.search(r"^ *temperature +FID$", out, re.M), out
    rows = [(float(t), float(d)) for t, d in ROW.findall(out)]
    assert [t for t, _ in rows] == [0.5, 1.0] and all(d > 0 for _, d in rows), out
    assert re.search(r"^ +train/test +\d+\.\d{4} ", out, re.M) and png.is_file()
    assert not (tmp_path / "cache").exists()  # no classifier was trained


def test_cli_bad_weights_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, bad)
    try:
        rc = main(["temperature", str(tmp_path / "no-run"), "--inception", str(bad), "-o", str(tmp_path / "t.png")])
    except SystemExit as exit_:
        rc = exit_.code
    _, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert "msflow temperature: error: " in err and str(bad) in err and "missing keys" in err
