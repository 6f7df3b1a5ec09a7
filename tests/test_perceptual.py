"""LPIPS without torchvision: backbones in torchvision's key layout, the real v0.1 heads, the
formula against an independent re-computation, and clear errors for mismatched files."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from talkcli.errors import EXIT_USER, InputFileError, ModelFileError
from talkcli.models.perceptual import (
    ALEX_WIDTHS,
    LPIPS,
    VGG16_WIDTHS,
    alexnet_features,
    backbone_from_state_dict,
    head_widths,
    load_lpips,
    vgg16_features,
)
from talkcli.tiny.perceptual import (
    TINY_ALEX_WIDTHS,
    TINY_VGG_WIDTHS,
    tap_widths,
    tiny_alexnet_state_dict,
    tiny_lpips_heads,
    tiny_vgg16_state_dict,
    write_tiny_lpips_files,
)
from talkcli.weights import registry
from talkcli.weights.safe_load import load_torch_file

REAL_TAPS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
TINY = {
    "alex": (TINY_ALEX_WIDTHS, tiny_alexnet_state_dict),
    "vgg": (TINY_VGG_WIDTHS, tiny_vgg16_state_dict),
}


@pytest.fixture(autouse=True)
def _isolated_registry(tmp_path, monkeypatch):
    """No user cache, $TALKCLI_WEIGHTS or ./weights may leak into registry lookups."""
    monkeypatch.delenv(registry.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(registry.ENV_MIRROR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _tiny_pair(net: str, seed: int = 0) -> tuple[dict, dict]:
    widths, make = TINY[net]
    return make(widths, seed), tiny_lpips_heads(tap_widths(net, widths), seed)


def _images(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.4 * torch.randn(b, 3, size, size, generator=g)).clamp(-1, 1)
    return x, y


# -- an independent re-computation of LPIPS from the state dicts ------------------------------


def _reference_features(net: str, sd: dict, z: torch.Tensor) -> list[torch.Tensor]:
    def conv(z, i, **kw):
        return F.relu(F.conv2d(z, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], **kw))

    taps = []
    if net == "vgg":
        for block, ids in enumerate(([0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28])):
            if block:
                z = F.max_pool2d(z, 2, 2)
            for i in ids:
                z = conv(z, i, padding=1)
            taps.append(z)
    else:
        z = conv(z, 0, stride=4, padding=2)
        taps.append(z)
        z = conv(F.max_pool2d(z, 3, 2), 3, padding=2)
        taps.append(z)
        z = conv(F.max_pool2d(z, 3, 2), 6, padding=1)
        taps.append(z)
        z = conv(z, 8, padding=1)
        taps.append(z)
        z = conv(z, 10, padding=1)
        taps.append(z)
    return taps


def _reference_lpips(net, sd, heads, x, y):
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fx = _reference_features(net, sd, (x - shift) / scale)
    fy = _reference_features(net, sd, (y - shift) / scale)
    total = torch.zeros(x.shape[0])
    for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += ((a - b) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_reference_formula(net):
    sd, heads = _tiny_pair(net, seed=1)
    model = LPIPS(net, sd, heads)
    x, y = _images(3, 64)
    with torch.no_grad():
        d = model(x, y)
    assert d.shape == (3,)
    torch.testing.assert_close(d, _reference_lpips(net, sd, heads, x, y), rtol=1e-5, atol=1e-6)
    assert (d > 0).all()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_identity_symmetry_and_gradients(net):
    model = LPIPS(net, *_tiny_pair(net))
    x, y = _images(2, 48 if net == "vgg" else 64, seed=2)
    torch.testing.assert_close(model(x, x), torch.zeros(2), rtol=0, atol=1e-7)
    torch.testing.assert_close(model(x, y), model(y, x))
    # frozen, but differentiable with respect to the inputs
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training  # dropout stays off
    xr = x.clone().requires_grad_(True)
    model(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    # a step against the gradient lowers the distance
    with torch.no_grad():
        assert model(xr - 0.05 * xr.grad.sign(), y).sum() < model(x, y).sum()


def test_matches_the_lpips_package_forward(monkeypatch):
    """The lpips package's own LPIPS.forward (torchvision replaced by our feature stacks)."""
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the lpips package (heads data files) is not installed")
    torch.manual_seed(0)
    stacks = {"alex": alexnet_features(), "vgg": vgg16_features()}
    for stack in stacks.values():
        for m in stack.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
                torch.nn.init.normal_(m.bias, std=0.1)

    class _Model:
        def __init__(self, features):
            self.features = features

    tv = types.ModuleType("torchvision")
    tvm = types.ModuleType("torchvision.models")
    tvm.alexnet = lambda pretrained=True, **_: _Model(stacks["alex"].features)
    tvm.vgg16 = lambda pretrained=True, **_: _Model(stacks["vgg"].features)
    tv.models = tvm
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tvm)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        import lpips

        x, y = _images(2, 64, seed=3)
        for net in ("alex", "vgg"):
            ref = lpips.LPIPS(net=net, verbose=False)
            heads = load_torch_file(registry.resolve(f"lpips-{net}"))
            ours = LPIPS(net, stacks[net].state_dict(), heads)
            with torch.no_grad():
                torch.testing.assert_close(ours(x, y), ref(x, y).flatten(), rtol=1e-5, atol=1e-7)
    finally:
        for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
            del sys.modules[name]


# -- real head files and torchvision layouts ------------------------------------------------------


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_real_lpips_heads_load(net):
    path = registry.locate(f"lpips-{net}")
    if path is None:
        pytest.skip("the lpips package (heads data files) is not installed")
    heads = load_torch_file(path, "LPIPS heads")
    assert head_widths(heads) == REAL_TAPS[net]
    assert all(
        heads[f"lin{k}.model.1.weight"].shape == (1, c, 1, 1) for k, c in enumerate(REAL_TAPS[net])
    )
    assert all((v >= 0).all() for v in heads.values())
    # full-width backbones with torchvision's indices take them
    stack = alexnet_features(ALEX_WIDTHS) if net == "alex" else vgg16_features(VGG16_WIDTHS)
    assert stack.widths == REAL_TAPS[net]
    model = LPIPS(net, stack.state_dict(), heads)
    assert torch.equal(model.lin2.model[1].weight, heads["lin2.model.1.weight"])


def test_torchvision_key_layout():
    vgg = vgg16_features().state_dict()
    convs = sorted({int(k.split(".")[1]) for k in vgg})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3)
    alex = alexnet_features().state_dict()
    assert {k: tuple(v.shape) for k, v in alex.items() if k.endswith("weight")} == {
        "features.0.weight": (64, 3, 11, 11),
        "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3),
        "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3),
    }


def test_classifier_keys_are_accepted_and_ignored():
    sd, heads = _tiny_pair("alex")
    assert any(k.startswith("classifier.") for k in sd)
    model = LPIPS("alex", sd, heads)
    assert not any("classifier" in k for k in model.state_dict())


# -- tiny pack through the registry, and errors ----------------------------------------------------


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_tiny_pack_round_trips_through_load_lpips(tmp_path, net):
    files = write_tiny_lpips_files(tmp_path / "w", net, seed=5)
    assert files["backbone"].name == registry.get({"alex": "alexnet", "vgg": "vgg16"}[net]).filename
    model = load_lpips(net, weights_dir=tmp_path / "w")
    sd = load_torch_file(files["backbone"])
    heads = load_torch_file(files["heads"])
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, sd[k])
    x, y = _images(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), _reference_lpips(net, sd, heads, x, y))
    # explicit paths win over the registry
    again = load_lpips(net, backbone_path=files["backbone"], heads_path=files["heads"])
    assert torch.equal(again(x, y), model(x, y))


def _one_line(err, *needles):
    assert err.exit_code == EXIT_USER and "\n" not in str(err)
    for needle in needles:
        assert needle in str(err), (needle, str(err))


def test_missing_backbone_says_how_to_fetch(tmp_path):
    with pytest.raises(ModelFileError) as info:
        load_lpips("alex", weights_dir=tmp_path / "empty")
    _one_line(info.value, "alexnet", "talkcli weights fetch alexnet")
    with pytest.raises(InputFileError) as info:
        load_lpips("alex", backbone_path=tmp_path / "nope.pth")
    _one_line(info.value, "nope.pth")


def test_heads_that_do_not_match_the_backbone(tmp_path):
    files = write_tiny_lpips_files(tmp_path / "w", "alex")
    real_heads = registry.locate("lpips-alex", None)
    if real_heads is None:
        real_heads = tmp_path / "vgg_heads.pth"
        torch.save(tiny_lpips_heads(REAL_TAPS["vgg"]), real_heads)
    with pytest.raises(ModelFileError) as info:
        load_lpips("alex", backbone_path=files["backbone"], heads_path=real_heads)
    _one_line(info.value, str(real_heads), "heads have widths", "must be for the same network")


def test_broken_backbones_are_named(tmp_path):
    sd, _ = _tiny_pair("vgg")
    del sd["features.12.bias"]
    bad = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, bad)
    with pytest.raises(ModelFileError) as info:
        load_lpips("vgg", weights_dir=tmp_path)
    _one_line(info.value, str(bad), "missing features.12.bias")
    # an AlexNet file given as the VGG16 backbone
    torch.save(tiny_alexnet_state_dict(), bad)
    with pytest.raises(ModelFileError, match="features.2.weight is missing"):
        load_lpips("vgg", weights_dir=tmp_path)
    # truncated
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="truncated"):
        load_lpips("vgg", weights_dir=tmp_path)


def test_head_file_errors():
    with pytest.raises(ValueError, match=r"lin3.model.1.weight is missing"):
        head_widths({f"lin{k}.model.1.weight": torch.ones(1, 4, 1, 1) for k in range(3)})
    with pytest.raises(ValueError, match=r"expected \(1, C, 1, 1\)"):
        head_widths({f"lin{k}.model.1.weight": torch.ones(4) for k in range(5)})
    with pytest.raises(ValueError, match="LPIPS net must be"):
        backbone_from_state_dict("squeeze", {})


def test_forward_checks_inputs():
    model = LPIPS("alex", *_tiny_pair("alex"))
    x, y = _images(2, 64)
    with pytest.raises(ValueError, match="same shape"):
        model(x, y[:1])
    with pytest.raises(ValueError, match="at least 32"):
        model(x[..., :16, :16], y[..., :16, :16])
