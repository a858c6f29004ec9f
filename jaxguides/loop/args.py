"""A fit's arguments split for ``jit``: array leaves traced, everything else static
(by value: ``model/concrete.py``), and the retry with concrete NumPy arguments."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxguides._errors import ModelTraceError
from jaxguides.model.concrete import (
    Concrete,
    arg_entries,
    concretization_error,
    culprits,
    explain,
    leaf_labels,
    numpy_args,
    static_leaves,
)

__all__ = ["Static", "combine", "is_array", "partition", "with_concrete_args"]


@dataclasses.dataclass(frozen=True)
class Static:
    treedef: Any
    leaves: tuple[tuple[int, Any], ...]


def is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def partition(
    args: tuple[Any, ...], kwargs: dict[str, Any], concrete: set[int] | frozenset[int] = frozenset()
) -> tuple[list[Any], Static]:
    """``(dynamic, static)``: array leaves traced, the rest static; the array
    leaves at positions ``concrete`` are static too, by value (see ``model/concrete.py``)."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    traced = [is_array(x) and i not in concrete for i, x in enumerate(leaves)]
    dynamic = [x if t else None for x, t in zip(leaves, traced)]
    static = tuple((i, Concrete(x) if is_array(x) else x) for i, (x, t) in enumerate(zip(leaves, traced)) if not t)
    try:
        hash(static)
    except TypeError as err:
        raise TypeError(f"model arguments must be arrays or hashable Python values: {err}") from None
    return dynamic, Static(treedef, static)


def combine(dynamic: list[Any], static: Static) -> tuple[tuple[Any, ...], dict[str, Any]]:
    fixed = {i: x.value if isinstance(x, Concrete) else x for i, x in static.leaves}
    leaves = [fixed[i] if i in fixed else x for i, x in enumerate(dynamic)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


def with_concrete_args(
    name: str,
    run: Callable[..., Any],
    model: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    static_argnames: Sequence[int | str],
) -> Any:
    """``run(args, kwargs, concrete)`` with the leaves ``static_argnames`` names
    kept concrete. If tracing the model fails on a traced value, once more with
    every NumPy array argument concrete too, with a warning; an error that
    remains names the argument and ``static_argnames``. Such an error is raised
    while tracing, before any step has run, so the second run starts afresh."""
    concrete = static_leaves(model, args, kwargs, static_argnames)
    for attempt in range(2):
        try:
            return run(args, kwargs, concrete)
        except Exception as err:  # noqa: BLE001 - only a concretization error is handled
            cause = concretization_error(err)
            if cause is None:
                raise
            labels, entries = leaf_labels(model, args, kwargs), arg_entries(model, args, kwargs)
            leaves = jax.tree.leaves((args, kwargs))
            traced = [i for i, x in enumerate(leaves) if is_array(x) and i not in concrete]
            needed, pinned = culprits(cause, args, kwargs, traced)
            names = list(dict.fromkeys(labels[i] for i in needed))
            suggest = tuple(dict.fromkeys(entries[i] for i in needed))
            numpy_leaves = {i for i in traced if isinstance(leaves[i], (np.ndarray, np.generic))}
            more = numpy_args(args, kwargs, concrete)
            if attempt == 1 or not numpy_leaves or (pinned and not numpy_leaves & set(needed)):
                fix = (
                    f"Keep it concrete with {name}(..., static_argnames={suggest!r}) (a jax.Array is kept concrete "
                    "only when named there): its value then keys the compilation, one compilation per distinct value."
                )
                site = getattr(err, "site", None)
                raise ModelTraceError(site, explain(cause, names, pinned, f"{name} traces it", fix)) from cause
            kept = [labels[i] for i in sorted(numpy_leaves)]
            warnings.warn(
                f"{name}: the model needs the concrete value of {', '.join(names)}; it is traced again with the "
                f"NumPy array arguments {list(dict.fromkeys(kept))} kept concrete (static). Each distinct value of "
                "them compiles anew, and each is a constant of the compiled program: keep concrete only what the "
                f"model reads in Python, {name}(..., static_argnames={suggest!r}), which also silences this.",
                stacklevel=3,
            )
            concrete = concrete | static_leaves(model, args, kwargs, more)
    raise AssertionError("unreachable")
