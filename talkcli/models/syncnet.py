"""SyncNet v2 (joonson/syncnet_python ``SyncNetModel.S``) with its key layout, for LSE-C / LSE-D.

``syncnet_v2.model`` is a plain state dict (``torch.save(model.state_dict())``; syncnet_python's
``loadParameters`` copies ``loaded_state.items()`` into ``S``), keys and shapes in
``../shared/formats/syncnet_v2_keys.json``. The four ``nn.Sequential`` stacks are rebuilt here
with the same indices, so the file loads key for key:

* ``netcnnaud`` (audio, input (N, 1, 13, 20) MFCC): conv3x3 64, BN, ReLU, maxpool 1x1;
  conv3x3 192, BN, ReLU, maxpool 3x3/(1, 2); conv3x3 384, BN, ReLU; conv3x3 256, BN, ReLU;
  conv3x3 256, BN, ReLU, maxpool 3x3/2; conv 5x4 512, BN, ReLU -> (N, 512, 1, 1).
* ``netcnnlip`` (video, input (N, 3, 5, 224, 224) BGR in 0..255): conv3d 5x7x7/(1,2,2) 96, BN,
  ReLU, maxpool 1x3x3/(1,2,2); conv3d 1x5x5/(1,2,2) pad (0,1,1) 256, BN, ReLU, maxpool
  1x3x3/(1,2,2) pad (0,1,1); three conv3d 1x3x3 pad (0,1,1) 256 with BN, ReLU; maxpool
  1x3x3/(1,2,2); conv3d 1x6x6 512, BN, ReLU -> (N, 512, 1, 1, 1).
* ``netfcaud`` / ``netfclip``: Linear 512, BatchNorm1d, ReLU, Linear 1024.

Widths are read from the state dict, so tiny test packs load narrow copies through the same code.
Input sizes are fixed by the kernels (13x20 MFCC windows, 5 frames of 224x224).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from talkcli.errors import ModelFileError
from talkcli.models.state_dict import assign_checked, shape_text
from talkcli.weights.safe_load import load_torch_file

CROP_SIZE = 224
WINDOW_FRAMES = 5
MFCC_ROWS, MFCC_STEPS = 13, 20
_HINT = "use joonson/syncnet_python's syncnet_v2.model (`talkcli weights fetch syncnet`)"

# Conv indices in each stack with (kernel, stride, padding); BN follows each conv at index + 1.
AUDIO_CONVS: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    0: ((3, 3), (1, 1), (1, 1)),
    4: ((3, 3), (1, 1), (1, 1)),
    8: ((3, 3), (1, 1), (1, 1)),
    11: ((3, 3), (1, 1), (1, 1)),
    14: ((3, 3), (1, 1), (1, 1)),
    18: ((5, 4), (1, 1), (0, 0)),
}
AUDIO_POOLS = {
    3: ((1, 1), (1, 1), (0, 0)),
    7: ((3, 3), (1, 2), (0, 0)),
    17: ((3, 3), (2, 2), (0, 0)),
}
LIP_CONVS: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    0: ((5, 7, 7), (1, 2, 2), (0, 0, 0)),
    4: ((1, 5, 5), (1, 2, 2), (0, 1, 1)),
    8: ((1, 3, 3), (1, 1, 1), (0, 1, 1)),
    11: ((1, 3, 3), (1, 1, 1), (0, 1, 1)),
    14: ((1, 3, 3), (1, 1, 1), (0, 1, 1)),
    18: ((1, 6, 6), (1, 1, 1), (0, 0, 0)),
}
LIP_POOLS = {
    3: ((1, 3, 3), (1, 2, 2), (0, 0, 0)),
    7: ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    17: ((1, 3, 3), (1, 2, 2), (0, 0, 0)),
}
STACK_LEN = 21  # indices 0..20 in both conv stacks
FC_LINEARS = (0, 3)  # Linear, BatchNorm1d, ReLU, Linear
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_stack(
    convs: Mapping[int, tuple[tuple[int, ...], ...]],
    pools: Mapping[int, tuple[tuple[int, ...], ...]],
    widths: tuple[int, ...],
    in_channels: int,
    dims: int,
) -> nn.Sequential:
    conv_cls, bn_cls, pool_cls = (
        (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        if dims == 2
        else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
    )
    layers: list[nn.Module] = []
    in_c, k = in_channels, 0
    for i in range(STACK_LEN):
        if i in convs:
            kernel, stride, pad = convs[i]
            layers.append(conv_cls(in_c, widths[k], kernel, stride=stride, padding=pad))
            in_c = widths[k]
            k += 1
        elif i - 1 in convs:
            layers.append(bn_cls(in_c))
        elif i in pools:
            kernel, stride, pad = pools[i]
            layers.append(pool_cls(kernel, stride=stride, padding=pad))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _fc_stack(in_features: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class SyncNet(nn.Module):
    """syncnet_python's ``S``: ``forward_aud`` (N, 1, 13, 20) -> (N, D) and ``forward_lip``
    (N, 3, 5, 224, 224) -> (N, D), D = 1024 for the official weights."""

    def __init__(
        self,
        audio_widths: tuple[int, ...] = (64, 192, 384, 256, 256, 512),
        lip_widths: tuple[int, ...] = (96, 256, 256, 256, 256, 512),
        fc_audio: tuple[int, int] = (512, 1024),
        fc_lip: tuple[int, int] = (512, 1024),
    ) -> None:
        super().__init__()
        self.netcnnaud = _conv_stack(AUDIO_CONVS, AUDIO_POOLS, audio_widths, 1, 2)
        self.netfcaud = _fc_stack(audio_widths[-1], *fc_audio)
        self.netfclip = _fc_stack(lip_widths[-1], *fc_lip)
        self.netcnnlip = _conv_stack(LIP_CONVS, LIP_POOLS, lip_widths, 3, 3)
        self.feature_dim = fc_audio[1]
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> SyncNet:
        """Always in eval mode: BatchNorm uses the stored statistics."""
        return super().train(False)

    def forward_aud(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, MFCC_ROWS, MFCC_STEPS):
            raise ValueError(f"expected (N, 1, 13, 20) MFCC windows, got {tuple(x.shape)}")
        mid = self.netcnnaud(x)  # (N, 512, 1, 1)
        return self.netfcaud(mid.view(mid.shape[0], -1))  # (N, 1024)

    def forward_lip(self, x: Tensor) -> Tensor:
        want = (3, WINDOW_FRAMES, CROP_SIZE, CROP_SIZE)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected (N, 3, 5, 224, 224) face windows, got {tuple(x.shape)}")
        mid = self.netcnnlip(x)  # (N, 512, 1, 1, 1)
        return self.netfclip(mid.view(mid.shape[0], -1))  # (N, 1024)


def _conv_widths(
    sd: Mapping[str, Any], stack: str, convs: Mapping[int, tuple], in_channels: int
) -> tuple[int, ...]:
    widths = []
    in_c = in_channels
    for i, (kernel, _s, _p) in convs.items():
        key = f"{stack}.{i}.weight"
        w = sd.get(key)
        if not isinstance(w, Tensor) or tuple(w.shape[2:]) != tuple(kernel):
            got = "missing" if w is None else shape_text(w)
            raise ValueError(
                f"{key} is {got}, expected (out, {in_c}, {', '.join(map(str, kernel))})"
            )
        if w.shape[1] != in_c:
            raise ValueError(
                f"{key} takes {w.shape[1]} input channels, the layer before gives {in_c}"
            )
        in_c = int(w.shape[0])
        widths.append(in_c)
    return tuple(widths)


def _fc_widths(sd: Mapping[str, Any], stack: str, in_features: int) -> tuple[int, int]:
    first, last = (sd.get(f"{stack}.{i}.weight") for i in FC_LINEARS)
    for i, w in zip(FC_LINEARS, (first, last), strict=True):
        if not isinstance(w, Tensor) or w.ndim != 2:
            raise ValueError(f"{stack}.{i}.weight is {'missing' if w is None else shape_text(w)}")
    if first.shape[1] != in_features:
        raise ValueError(
            f"{stack}.0.weight takes {first.shape[1]} features, the conv stack gives {in_features}"
        )
    return int(first.shape[0]), int(last.shape[0])


def syncnet_from_state_dict(sd: Mapping[str, Any]) -> SyncNet:
    """Build a SyncNet holding ``sd`` (strict key check; ``num_batches_tracked`` may be absent,
    as in files saved by PyTorch < 0.4.1). Raises ValueError with a one-line reason."""
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict, got a {type(sd).__name__}")
    aud = _conv_widths(sd, "netcnnaud", AUDIO_CONVS, 1)
    lip = _conv_widths(sd, "netcnnlip", LIP_CONVS, 3)
    fc_aud = _fc_widths(sd, "netfcaud", aud[-1])
    fc_lip = _fc_widths(sd, "netfclip", lip[-1])
    if fc_aud[1] != fc_lip[1]:
        raise ValueError(f"audio and lip embeddings differ in width ({fc_aud[1]} vs {fc_lip[1]})")
    with torch.device("meta"):
        net = SyncNet(aud, lip, fc_aud, fc_lip)
    used = dict(sd)
    for key, value in net.state_dict().items():  # () or (1,), or absent before PyTorch 0.4.1
        if key.endswith("num_batches_tracked"):
            old = used.get(key)
            if old is None:
                used[key] = torch.zeros((), dtype=torch.long)
            elif isinstance(old, Tensor) and old.numel() == 1:
                used[key] = old.reshape(value.shape)
    return assign_checked(net, used)


def load_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNet:
    """Load ``syncnet_v2.model`` (or a tiny pack's copy) as a frozen SyncNet.

    Any problem with the file raises a one-line ModelFileError naming it (exit 2).
    """
    p = Path(path)
    sd = load_torch_file(p, "SyncNet model")
    try:
        net = syncnet_from_state_dict(sd)
    except ValueError as exc:
        raise ModelFileError(p, f"is not a SyncNet v2 state dict: {exc}", _HINT) from None
    return net.to(torch.device(device))
