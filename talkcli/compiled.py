"""``torch.compile`` where its start-up is repaid: ``--compile auto|on|off`` for batched networks.

``CompiledBatches`` wraps a function of a batch tensor (the generator's synthesis in ``animate``,
pSp in ``train prepare``):

* ``off``: always eager.
* ``on``: compiled from the first batch.
* ``auto``: the first batch runs eager and is timed; if the eager time predicted for the rows
  still to come exceeds ``pays_after_s`` (measured per network, docs/speed.md: about twice the
  eager seconds after which compiling breaks even), the rest is compiled. Short or small jobs
  never pay the start-up (~20-45 s on a CPU).

A compiled graph is tied to its batch shape, so shorter batches (a video's last) are padded to
the batch size with copies of their last row and the extra outputs dropped: one compilation per
run. If compiling or running the compiled function fails (no C++ compiler for inductor, an
operator it cannot handle), the failure is logged once and the work goes on eager.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "on", "off")


def check_compile_mode(mode: str, option: str = "--compile") -> str:
    """``mode`` if it is one of ``COMPILE_CHOICES``; a one-line UserError otherwise."""
    from talkcli.errors import UserError

    if mode not in COMPILE_CHOICES:
        raise UserError(f"{option} {mode!r}: expected one of {', '.join(COMPILE_CHOICES)}")
    return mode


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


class CompiledBatches:
    """Call ``fn`` on (B, ...) batches, compiled per ``mode`` (see the module docstring).

    ``total``: the rows the whole job will pass (for ``auto``'s prediction; None: unknown, so
    ``auto`` stays eager). ``batch``: the largest batch the job passes, which every compiled call
    is padded to (None: the first batch's size). ``label`` names the network in messages. After
    the run, ``compiled``/``startup_s``/``error`` say what happened (for manifests, benchmarks).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        mode: str = "auto",
        total: int | None = None,
        pays_after_s: float = 120.0,
        label: str = "network",
        batch: int | None = None,
    ) -> None:
        self.fn = fn
        self.mode = check_compile_mode(mode)
        self.total = total
        self.pays_after_s = float(pays_after_s)
        self.label = label
        self.done = 0  # rows passed so far
        self.batch = batch  # the padded batch size (None: the first batch's)
        self.compiled = False
        self.startup_s: float | None = None  # the first compiled call, compilation included
        self.error: str | None = None
        self._decided = mode != "auto"
        self._compiled_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        if mode == "on":
            self._compile()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> fn's (B, ...) output, compiled or eager."""
        n = int(x.shape[0])
        if self.batch is None or (not self.compiled and n > self.batch):
            self.batch = n
        if self._compiled_fn is not None and n <= self.batch:
            out = self._run_compiled(x)
            if out is not None:
                self.done += n
                return out
        t = time.perf_counter()
        out = self.fn(x)
        self.done += n
        if not self._decided:
            self._decide((time.perf_counter() - t) / max(n, 1))
        return out

    def record(self) -> dict[str, Any]:
        """What ran, for manifests: mode, compiled, start-up seconds, the fallback's reason."""
        return {
            "mode": self.mode,
            "compiled": self.compiled,
            "startup_s": None if self.startup_s is None else round(self.startup_s, 2),
            "error": self.error,
        }

    # -- steps -----------------------------------------------------------------------------------

    def _decide(self, seconds_per_row: float) -> None:
        """``auto``, after the first (eager, timed) batch: compile if the rest is long enough."""
        self._decided = True
        if self.total is None:
            return
        left = max(self.total - self.done, 0) * seconds_per_row
        if left > self.pays_after_s:
            log.info(
                "%s: about %.0f s of work left: compiling it with torch.compile "
                "(--compile off to skip)",
                self.label,
                left,
            )
            self._compile()

    def _compile(self) -> None:
        import torch

        try:
            self._compiled_fn = torch.compile(self.fn, dynamic=False)
        except Exception as exc:  # torch.compile unsupported here (Python version, platform)
            self._fall_back(exc)

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor | None:
        """The compiled call on ``x`` padded to the batch size; None after a failure."""
        import torch

        n, batch = int(x.shape[0]), int(self.batch or x.shape[0])
        padded = x if n == batch else torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])])
        t = time.perf_counter()
        try:
            out = self._compiled_fn(padded)  # type: ignore[misc]
        except Exception as exc:  # no C++ compiler, an operator inductor cannot handle
            self._fall_back(exc)
            return None
        if not self.compiled:
            self.compiled = True
            self.startup_s = time.perf_counter() - t
        return out if n == batch else out[:n]

    def _fall_back(self, exc: BaseException) -> None:
        self._compiled_fn = None
        self.compiled = False
        self.error = _first_line(exc)
        log.warning("%s: torch.compile failed (%s); going on without it", self.label, self.error)
