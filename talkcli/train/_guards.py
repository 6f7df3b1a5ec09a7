"""TEMPORARY stand-in for talkcli.guards until it lands on main (then this file goes)."""

from __future__ import annotations

import math

import numpy as np

from talkcli.errors import InputFileError, UserError

try:  # pragma: no cover - the real module wins once merged
    from talkcli.guards import check_finite_array, check_finite_loss, guard_outputs
except ImportError:  # pragma: no cover

    def check_finite_loss(value: float, step: int, what: str = "loss") -> None:
        if not math.isfinite(float(value)):
            raise UserError(f"{what} became {value} at step {step} (lower --lr, or check the data)")

    def check_finite_array(arr: np.ndarray, source, what: str = "array") -> None:
        if not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            raise InputFileError(source, f"{what} holds NaN or infinite values")

    def guard_outputs(outputs, inputs=(), force: bool = False) -> None:
        from talkcli.io.files import check_output_path

        for out in outputs:
            if out is not None:
                check_output_path(out)


__all__ = ["check_finite_array", "check_finite_loss", "guard_outputs"]
