"""NVIDIA network pickles (stylegan2-ada-pytorch, stylegan3) read without running their code.

NVIDIA's training code saves ``pickle.dump({'G': G, 'D': D, 'G_ema': G_ema, 'augment_pipe': ...,
'training_set_kwargs': ...})`` where each network is saved by ``torch_utils.persistence`` as
``_reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src, class_name,
state}``: loading it with NVIDIA's code *executes* ``module_src``. Here a restricted unpickler
resolves only an allow-list of globals:

- ``torch_utils.persistence._reconstruct_persistent_obj`` -> a plain record of the meta dict
  (``module_src`` is kept as text for a few marker lookups; never executed nor compiled),
- tensors: torch's own rebuild functions, with storages (``torch.storage._load_from_bytes``)
  read by ``torch.load(weights_only=True)``,
- numpy array rebuilds and plain containers (``talkcli.weights.safe_load``),
- ``dnnlib.util.EasyDict`` -> ``dict``.

Any other global refuses the file (ModelFileError, exit 2) naming that global. Networks come
back as ``NetworkRecord``s (class name, init kwargs, state-dict-style tensors); talkcli builds
its own network from a record through ``NETWORK_BUILDERS`` (class name -> builder), so D,
augment_pipe and unknown classes are listed but never constructed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from talkcli.errors import ModelFileError
from talkcli.io.files import require_file
from talkcli.weights.safe_load import RestrictedUnpickler

log = logging.getLogger(__name__)

SG2_ADA_GENERATOR = "training.networks.Generator"
SG3_GENERATOR = "training.networks_stylegan3.Generator"
_REFUSED_HINT = (
    "talkcli reads NVIDIA network pickles without running code and allows only tensors, "
    "plain containers and torch_utils.persistence records; this file asks for more"
)


@dataclass
class NetworkRecord:
    """One network of a pickle, as data: nothing of it was constructed or executed."""

    name: str  # key in the pickle's top-level dict: "G_ema", "G", "D", ...
    class_name: str  # e.g. "training.networks.Generator"
    init_kwargs: dict  # plain Python values (EasyDicts as dicts)
    state: dict[str, Tensor]  # parameters + persistent buffers, dotted state_dict keys
    init_args: tuple = ()
    module_src_sha256: str = ""  # digest of the embedded source, to tell versions apart
    attributes: dict[str, Any] = field(default_factory=dict)  # other plain attributes
    parameter_keys: frozenset[str] = frozenset()  # which state keys are parameters

    def parameter_count(self) -> int:
        """Number of parameter values (buffers such as noise maps and w_avg excluded)."""
        return sum(int(t.numel()) for k, t in self.state.items() if k in self.parameter_keys)


# -- the unpickler ---------------------------------------------------------------------------------


class _PersistentObject:
    """What ``_reconstruct_persistent_obj(meta)`` becomes here: the meta dict, untouched."""

    __slots__ = ("meta",)

    def __init__(self, meta: Any) -> None:
        self.meta = meta

    def __setstate__(self, state: Any) -> None:  # a BUILD opcode aimed at a record
        raise pickle.UnpicklingError("Unsupported global: state set on a persistence record")


_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global:|unsupported GLOBAL) (?:GLOBAL )?([\w.]+)")


def _load_storage_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` with ``weights_only=True`` (upstream: a full load)."""
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("tensor storage is not bytes")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": torch's note, not ours
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message is many lines: keep the global
        found = _REFUSED_GLOBAL.search(str(exc))
        wanted = found.group(1) if found else "an object"
        raise pickle.UnpicklingError(
            f"Unsupported global: {wanted} (in a tensor storage)"
        ) from None


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's ``_rebuild_from_type_v2`` limited to plain tensors and parameters."""
    if new_type not in (Tensor, nn.Parameter) or func not in _TENSOR_FUNCS:
        raise pickle.UnpicklingError(f"Unsupported global: tensor subclass {new_type!r}")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _tensor_globals() -> dict[tuple[str, str], Any]:
    utils = torch._utils
    found = {
        ("torch._utils", name): getattr(utils, name)
        for name in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
        if hasattr(utils, name)
    }
    found[("torch.storage", "_load_from_bytes")] = _load_storage_bytes
    found[("torch._tensor", "_rebuild_from_type_v2")] = _rebuild_from_type_v2
    found[("torch", "Tensor")] = Tensor
    found[("torch.nn.parameter", "Parameter")] = nn.Parameter
    found[("torch", "Size")] = torch.Size
    return found


_TENSOR_GLOBALS = _tensor_globals()
_TENSOR_FUNCS = tuple(v for (m, _n), v in _TENSOR_GLOBALS.items() if m == "torch._utils")
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **_TENSOR_GLOBALS,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _PersistentObject,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
}


class NetworkPickleUnpickler(RestrictedUnpickler):
    """``RestrictedUnpickler`` plus torch tensors, EasyDict and persistence records."""

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, extra=_PICKLE_GLOBALS)

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtypes: plain values
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return NetworkPickleUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        text = str(exc).splitlines()[0] if str(exc) else "unreadable"
        if "Unsupported global" in text:
            wanted = text.split("Unsupported global:", 1)[-1].strip()[:120]
            raise ModelFileError(
                path, f"refused to load this network pickle: it asks for {wanted}", _REFUSED_HINT
            ) from None
        raise ModelFileError(path, f"is not a readable network pickle ({text[:120]})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ModelFileError(
            path, f"is not a readable network pickle: truncated or damaged ({first})"
        ) from None
    except (RuntimeError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ModelFileError(path, f"is not a readable network pickle ({first})") from None


# -- records ---------------------------------------------------------------------------------------

_MODULE_MARKERS = (  # text found in the embedded source -> module it was saved from
    ("class SynthesisInput", "training.networks_stylegan3"),
    ("class SynthesisBlock", "training.networks"),
    ("class AugmentPipe", "training.augment"),
)


def _module_name(src: str) -> str:
    return next((mod for marker, mod in _MODULE_MARKERS if marker in src), "<unknown module>")


def _plain(value: Any, where: str, source: Path) -> Any:
    """Init kwargs and attributes as plain values; a record or tensor inside is refused."""
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, where, source) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where, source) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return value.item()
    raise ModelFileError(source, f"{where} holds a {type(value).__name__}, expected plain values")


def _module_state(
    meta_state: Any, prefix: str, source: Path, out: dict[str, Tensor], params: set[str]
) -> None:
    """Flatten an nn.Module ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``)."""
    if not isinstance(meta_state, Mapping):
        raise ModelFileError(source, f"network state at {prefix or '.'} is not a dict")
    skip = set(meta_state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for key, value in (meta_state.get(group) or {}).items():
            if value is None or (group == "_buffers" and key in skip):
                continue
            if not isinstance(value, Tensor):
                raise ModelFileError(source, f"{prefix}{key} is not a tensor")
            out[prefix + str(key)] = value.detach()
            if group == "_parameters":
                params.add(prefix + str(key))
    for key, sub in (meta_state.get("_modules") or {}).items():
        if sub is None:
            continue
        if not isinstance(sub, _PersistentObject) or not isinstance(sub.meta, Mapping):
            # left out: a generator missing it fails its strict state check, naming the keys
            log.debug("%s: submodule %s%s is not a persistence record", source, prefix, key)
            continue
        _module_state(sub.meta.get("state"), f"{prefix}{key}.", source, out, params)


def _record(name: str, obj: _PersistentObject, source: Path) -> NetworkRecord:
    meta = obj.meta
    if not isinstance(meta, Mapping) or meta.get("type") != "class":
        raise ModelFileError(source, f"{name!r} is not a persistence record of a class")
    src = meta.get("module_src")
    src = src if isinstance(src, str) else ""
    state = meta.get("state")
    tensors: dict[str, Tensor] = {}
    params: set[str] = set()
    _module_state(state, "", source, tensors, params)
    kwargs = _plain(state.get("_init_kwargs") or {}, f"{name} init kwargs", source)
    args = _plain(tuple(state.get("_init_args") or ()), f"{name} init args", source)
    attrs = {
        k: v
        for k, v in state.items()
        if not k.startswith("_") and isinstance(v, str | int | float | bool | type(None))
    }
    rec = NetworkRecord(
        name=name,
        class_name=f"{_module_name(src)}.{meta.get('class_name')}",
        init_kwargs=kwargs,
        state=tensors,
        init_args=args,
        module_src_sha256=hashlib.sha256(src.encode("utf-8", "replace")).hexdigest(),
        attributes=attrs,
        parameter_keys=frozenset(params),
    )
    return rec


def read_network_pickle(path: str | Path) -> dict[str, NetworkRecord]:
    """The networks of an NVIDIA pickle by top-level key; never executes ``module_src``.

    ModelFileError (exit 2) when the file asks for any global outside the allow-list, is not a
    dict, or holds no persistence record.
    """
    records, _extra = read_network_pickle_all(path)
    return records


def read_network_pickle_all(path: str | Path) -> tuple[dict[str, NetworkRecord], dict[str, Any]]:
    """(networks, the other top-level entries as plain values where possible)."""
    p = require_file(path, "network pickle")
    obj = _unpickle(p)
    if not isinstance(obj, Mapping):
        raise ModelFileError(
            p, f"is not an NVIDIA network pickle (found a {type(obj).__name__}, expected a dict)"
        )
    records: dict[str, NetworkRecord] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, _PersistentObject):
            records[str(key)] = _record(str(key), value, p)
        else:
            extra[str(key)] = value
    if not records:
        raise ModelFileError(
            p,
            "holds no networks (no torch_utils.persistence records)",
            "expected an NVIDIA network pickle such as ffhq.pkl",
        )
    return records, extra


def looks_like_network_pickle(path: str | Path) -> bool:
    """A ``.pkl`` or a raw pickle (not a zip, not a legacy torch.save file)."""
    p = Path(path)
    if p.suffix.lower() == ".pkl":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(3)
    except OSError:
        return False
    # torch.save writes a zip (PK) or, legacy, starts with LONG1 of its magic number (0x8a).
    return len(head) == 3 and head[0] == 0x80 and head[2] not in (0x8A,)


# -- building networks -----------------------------------------------------------------------------

NETWORK_BUILDERS: dict[str, Callable[[NetworkRecord], nn.Module]] = {}


def _fill_builders() -> None:
    """Import the modules that register builders (lazily: they import this module)."""
    from talkcli.models import stylegan2_ada

    NETWORK_BUILDERS.update(stylegan2_ada.BUILDERS)
    try:
        from talkcli.models import stylegan3  # type: ignore[attr-defined]
    except ImportError:  # StyleGAN3 support not installed in this build
        return
    NETWORK_BUILDERS.update(getattr(stylegan3, "BUILDERS", {}))


def build_network(record: NetworkRecord, source: str | Path = "<pickle>") -> nn.Module:
    """talkcli's own network for ``record``; ModelFileError if its class has no builder."""
    _fill_builders()
    builder = NETWORK_BUILDERS.get(record.class_name)
    if builder is None:
        known = ", ".join(sorted(NETWORK_BUILDERS)) or "none"
        raise ModelFileError(
            source,
            f"network {record.name!r} is a {record.class_name}, which talkcli cannot build",
            f"supported: {known}",
        )
    try:
        return builder(record)
    except ModelFileError as exc:
        raise ModelFileError(source, f"network {record.name!r}: {exc.problem}", exc.hint) from None
    except (ValueError, KeyError, TypeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelFileError(
            source, f"network {record.name!r} does not match its {record.class_name}: {first}"
        ) from None


def check_buildable(records: Mapping[str, NetworkRecord], source: str | Path) -> list[str]:
    """Build every network talkcli has a builder for (strict state check); their names.

    ModelFileError (one line naming the keys) for the first that does not match its layout;
    networks of other classes (D, augment_pipe, unknown) are left alone.
    """
    _fill_builders()
    built = []
    for name, rec in records.items():
        if rec.class_name in NETWORK_BUILDERS:
            build_network(rec, source)
            built.append(name)
    return built


def load_pickle_generator(path: str | Path, network: str = "G_ema") -> nn.Module:
    """The generator ``network`` (``G_ema`` or ``G``) of an NVIDIA pickle, built by talkcli."""
    p = Path(path)
    records = read_network_pickle(p)
    if network not in records:
        raise ModelFileError(
            p,
            f"has no network {network!r} (found {', '.join(records)})",
            "choose one of those (--network)",
        )
    g = build_network(records[network], p)
    g.checkpoint_kind = "nvidia-pickle"
    g.metadata = {}
    return g


def describe_records(records: Mapping[str, NetworkRecord]) -> list[str]:
    """Lines for ``weights inspect``: class, parameter count and init kwargs per network."""
    lines = []
    for name, rec in records.items():
        n = rec.parameter_count()
        lines.append(f"{name}: {rec.class_name}, {n:,} parameters, {len(rec.state)} tensors")
        for key, value in rec.init_kwargs.items():
            lines.append(f"  {key}: {value!r}"[:200])
    return lines


__all__ = [
    "NETWORK_BUILDERS",
    "NetworkRecord",
    "build_network",
    "check_buildable",
    "describe_records",
    "load_pickle_generator",
    "looks_like_network_pickle",
    "read_network_pickle",
    "read_network_pickle_all",
]
