"""What of a guide's params the optimizer trains, and what it only carries.

Guide params hold, beside the trained values (locs, scales, the model's own
``numpyro.param`` sites), constants: the array parameters of supports (an
interval's bounds) and the model's ``numpyro.mutable`` state. The optimizer
must see only the former, so constants get no optimizer state (no Adam
moments) and no gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["trained_part", "with_constants"]

_CONSTANT_FIELDS = ("support", "model_state")  # in guide params, but never trained


def trained_part(params: Any) -> tuple[Any, dict[str, Any]]:
    """``(trained, constant)``: guide params with their constant fields (support
    data, the model's mutable state) set to ``None``, and those fields (with
    ``"parts"``: the constants of each part of an ``AutoGuideList``'s params).
    The optimizer sees only the trained part, so constants get no optimizer
    state (no Adam moments for an interval's bounds) and no gradient."""
    fields = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
    constant: dict[str, Any] = {name: getattr(params, name) for name in _CONSTANT_FIELDS if name in fields}
    changes: dict[str, Any] = dict.fromkeys(constant)
    if "parts" in fields:
        split = [trained_part(p) for p in params.parts]
        changes["parts"] = tuple(t for t, _ in split)
        constant["parts"] = tuple(c for _, c in split)
    if not constant:
        return params, {}
    return dataclasses.replace(params, **changes), constant  # type: ignore[type-var]


def with_constants(trained: Any, constant: dict[str, Any]) -> Any:
    """The inverse of :func:`trained_part`."""
    if not constant:
        return trained
    changes = {k: v for k, v in constant.items() if k != "parts"}
    if "parts" in constant:
        changes["parts"] = tuple(with_constants(t, c) for t, c in zip(trained.parts, constant["parts"]))
    return dataclasses.replace(trained, **changes)
