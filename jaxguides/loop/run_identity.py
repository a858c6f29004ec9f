"""What run a checkpoint belongs to, so ``fit`` resumes only the run that wrote it.

A checkpoint of another run whose state happens to have the same shapes (the
same model with other data, another learning rate, another key) would resume
without complaint and end somewhere no single run goes. So a checkpoint
records its run as plain strings, the same in every process:

- ``model``: its name and config (``model/identity.py``: the Python values it carries);
- ``guide``: its type and config (init strategy, ``init_scale``, ...);
- ``optimizer``: its structure -- the functions it is made of (by name) and
  the Python values they close over (``learning_rate=0.01``, ``b1=0.9``);
- ``loss``: the loss function (``elbo_loss`` and its settings, or a custom one);
- ``key``: the key's data;
- one entry per model argument: shape and dtype of an array (its "data" entry:
  a SHA-256 of shape, dtype and a strided sample of at most 65,536 elements,
  cheap for any size), the description of a static value.

Values it cannot describe stably (an object without a fixed description, an
array spread over other processes) are recorded by type or shape only, so a
change there goes unnoticed rather than refusing a run's own checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxguides.model.concrete import leaf_labels
from jaxguides.model.identity import ATOMS, carried, describe, model_config, model_name

__all__ = ["Record", "difference", "run_record"]

Record = dict[str, str]
_SAMPLE = 65536  # elements of an array argument hashed into its fingerprint
_DEPTH = 12  # levels of an optimizer's closures described (optax chains nest deep)


def run_record(
    model: Callable[..., Any],
    guide: Any,
    optimizer: Any,
    loss: Any,
    rng_key: jax.Array,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Record:
    """The run's description (see module doc); equal records, the same run."""
    record = {
        "model": _named(model, model_config(model)),
        "guide": _named(guide, tuple(kv for kv in model_config(guide) if kv[0] != "model")),
        "optimizer": structure(optimizer),
        "loss": structure(loss, depth=4),
        "key": _key(rng_key),
    }
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    record["argument structure"] = str(treedef)
    for label, leaf in zip(leaf_labels(model, args, kwargs), leaves):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            record[f"shape of {label}"] = f"{leaf.dtype}{list(np.shape(leaf))}"
            record[f"data of {label}"] = fingerprint(leaf)
        else:
            record[f"value of {label}"] = describe(leaf, 3) or type(leaf).__qualname__
    return record


def difference(saved: Record, this: Record) -> str:
    """What differs, e.g. ``"optimizer: scale_by_adam(...) in the checkpoint, ... in this call"``."""
    parts = []
    for name in [*this, *(k for k in saved if k not in this)]:
        a, b = saved.get(name, "absent"), this.get(name, "absent")
        if a != b:
            if name.startswith("data of "):
                parts.append(f"{name}: other values (fingerprint {a[:12]} in the checkpoint, {b[:12]} in this call)")
            else:
                a, b = _around_difference(a, b)
                parts.append(f"{name}: {a} in the checkpoint, {b} in this call")
    return "; ".join(parts)


def fingerprint(x: Any) -> str:
    """SHA-256 of an array's shape, dtype and a strided sample of at most 65,536 elements."""
    if _is_key(x):
        x = jax.random.key_data(x)
    h = hashlib.sha256(f"{np.dtype(x.dtype).str}{list(np.shape(x))}".encode())
    size = int(np.size(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # spread over processes: shape only
        return h.hexdigest() + " (shape only)"
    if size:
        stride = -(-size // _SAMPLE)
        flat = x.reshape(-1)
        sample = flat[::stride] if stride > 1 else flat  # on the array's device: only the sample moves
        h.update(np.ascontiguousarray(np.asarray(sample)).tobytes())
    return h.hexdigest()


def structure(obj: Any, depth: int = _DEPTH) -> str:
    """A stable description of a function-made object (an optax transformation):
    the functions by module and name, with the values they close over."""
    return _structure(obj, depth, set())


def _structure(obj: Any, depth: int, active: set[int]) -> str:
    if isinstance(obj, (*ATOMS, type)):
        return describe(obj, 1) or "?"
    if isinstance(obj, np.dtype):
        return str(obj)
    if depth <= 0:
        return "..."
    if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
        return f"array {fingerprint(obj)[:16]}"
    if id(obj) in active:
        return "<cycle>"
    active.add(id(obj))
    try:
        inner = functools.partial(_structure, depth=depth - 1, active=active)
        if isinstance(obj, dict):
            return (
                "{" + ", ".join(f"{k!r}: {inner(v)}" for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0]))) + "}"
            )
        if isinstance(obj, (tuple, list)):
            name = type(obj).__name__ if hasattr(obj, "_fields") else ""
            return f"{name}(" + ", ".join(inner(v) for v in obj) + ")"
        if isinstance(obj, types.FunctionType):
            cells = [f"{name}={inner(value)}" for name, value in carried(obj)]  # its filled closure cells
            return f"{model_name(obj)}(" + ", ".join(cells) + ")"
        if isinstance(obj, functools.partial):
            return f"partial({inner(obj.func)}, {inner(obj.args)}, {inner(obj.keywords)})"
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = (f"{f.name}={inner(getattr(obj, f.name))}" for f in dataclasses.fields(obj))
            return f"{type(obj).__qualname__}(" + ", ".join(fields) + ")"
        return type(obj).__qualname__  # no stable description: by type only
    finally:
        active.discard(id(obj))


def _named(obj: Any, config: Any) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in config)
    return model_name(obj) + (f"({inner})" if inner else "")


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key(rng_key: Any) -> str:
    if _is_key(rng_key):
        return f"{jax.random.key_impl(rng_key)} {np.asarray(jax.random.key_data(rng_key)).tolist()}"
    return str(np.asarray(rng_key).tolist())


def _around_difference(a: str, b: str, width: int = 120) -> tuple[str, str]:
    """Long descriptions cut to where they first differ, e.g. ``...learning_rate=0.01...``."""
    if max(len(a), len(b)) <= width:
        return a, b
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, same - width // 2)

    def cut(text: str) -> str:
        return ("..." if start else "") + text[start : start + width] + ("..." if start + width < len(text) else "")

    return cut(a), cut(b)
