"""Splitting work across processes and machines: ``--shard K/N``, torchrun and Slurm variables.

One home for the rank logic that ``train prepare`` and ``animate`` batch mode share:

* ``parse_shard("K/N")``: an explicit shard, K counting from 0 (0/4 .. 3/4).
* ``shard_from_env()``: the shard this process is, from the environment (first match wins):
  torchrun / ``torch.distributed`` (``RANK``, ``WORLD_SIZE``), a Slurm job array
  (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``), or a Slurm
  multi-task step (``SLURM_PROCID``, ``SLURM_NTASKS``). None when none applies.
* ``split_items(items, k, n)``: shard ``k`` of ``n`` takes items ``k, k + n, k + 2n, ...``
  (round robin over a sorted list, so every process agrees without talking to the others).
* ``torchrun_env()``: rank, world size and local rank for ``train fit`` (DDP).

Only the standard library is imported here (startup stays fast).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from talkcli.errors import UserError

T = TypeVar("T")

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N; a one-line UserError otherwise."""
    m = _SHARD_RE.match(str(text))
    if not m:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/4 (K counts from 0)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text}: K must be 0..N-1 and N >= 1 (K counts from 0)")
    return k, n


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(K, N) from torchrun, a Slurm array or a Slurm multi-task step; None if single."""
    env = os.environ if env is None else env
    candidates = (
        ("RANK", "WORLD_SIZE", None),
        ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
        ("SLURM_PROCID", "SLURM_NTASKS", None),
    )
    for rank_var, size_var, min_var in candidates:
        rank, size = _int_env(env, rank_var), _int_env(env, size_var)
        if rank is None or size is None:
            continue
        if min_var is not None:
            rank -= _int_env(env, min_var) or 0
        if size < 1 or not 0 <= rank < size:
            raise UserError(
                f"${rank_var}/${size_var} give shard {rank} of {size}, which is not 0..N-1 "
                "(for arrays that skip ids, pass --shard K/N)"
            )
        if size > 1:
            return rank, size
    return None


def resolve_shard(explicit: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``--shard`` if given, else the environment's, else (0, 1)."""
    if explicit:
        return parse_shard(explicit)
    return shard_from_env(env) or (0, 1)


def split_items(items: Sequence[T], k: int, n: int) -> list[T]:
    """Shard ``k`` of ``n``: items ``k, k + n, k + 2n, ...`` (keep ``items`` in a fixed order)."""
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"shard {k} of {n}: need 0 <= k < n")
    return list(items[k::n])


@dataclass(frozen=True)
class DistEnv:
    """The torchrun process layout: ``rank`` of ``world_size``, ``local_rank`` on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Rank, world size and local rank set by torchrun (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); a single process when they are absent."""
    env = os.environ if env is None else env
    world = _int_env(env, "WORLD_SIZE") or 1
    rank = _int_env(env, "RANK") or 0
    local = _int_env(env, "LOCAL_RANK")
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"$RANK={rank} / $WORLD_SIZE={world} are not a valid process layout")
    return DistEnv(rank, world, rank if local is None else local)
