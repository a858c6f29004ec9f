"""Model arguments kept concrete under ``jit``: data a model reads in Python.

``fit`` traces array arguments (their values are unknown while the step is
compiled) and keeps everything else static. A model that reads a data value in
Python -- ``len(np.unique(dept))`` for a plate size, ``if y.max() > 1:`` -- then
fails with a tracer-conversion error, while NumPyro, which traces nothing it
does not have to, runs it. Such an argument is kept concrete instead: named in
``static_argnames`` (a keyword's name, a positional parameter's name, or a
position), or found by ``fit`` itself, which on such an error keeps every NumPy
array argument concrete and traces once more, with a warning.

A concrete argument is a compile-time constant: its value (bytes, shape,
dtype, as :class:`Concrete`) keys the compilation, so each distinct value
compiles anew, and a large one makes a large program. Keep concrete only what
the model reads in Python.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from jaxguides.model.sites import call_signature

__all__ = [
    "CONCRETIZATION_ERRORS",
    "Concrete",
    "arg_entries",
    "concretization_error",
    "culprits",
    "explain",
    "leaf_labels",
    "numpy_args",
    "static_leaves",
]

CONCRETIZATION_ERRORS = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,  # TracerBoolConversionError is one
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


class Concrete:
    """A hashable, immutable array kept concrete: equal when bytes, shape and dtype are.

    ``value`` is a read-only copy of a NumPy array (the caller's may change
    later), or the ``jax.Array`` itself (immutable).
    """

    __slots__ = ("_key", "value")

    def __init__(self, x: Any):
        if isinstance(x, jax.core.Tracer):
            raise TypeError("a traced value cannot be kept concrete")
        host = np.asarray(x)
        if isinstance(x, np.ndarray):
            x = np.array(x, copy=True)
            x.setflags(write=False)
        self.value = x
        digest = hashlib.blake2b(np.ascontiguousarray(host).tobytes(), digest_size=16).digest()
        self._key = (host.shape, host.dtype.str, digest)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Concrete) and self._key == other._key

    def __repr__(self) -> str:
        return f"Concrete({self._key[1]}{list(self._key[0])})"


def _positional_names(model: Callable[..., Any], n: int) -> list[str | None]:
    """The model's parameter name of each of ``n`` positional arguments (``None`` if unknown)."""
    sig = call_signature(model)
    names: list[str | None] = [None] * n
    if sig is None:
        return names
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, p in enumerate(params[:n]):
        names[i] = p.name
    return names


def _leaf_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[int | str, Any]]:
    """For each leaf of ``(args, kwargs)`` (in ``tree_flatten`` order): the argument
    it belongs to (a position or a keyword) and the leaf."""
    out: list[tuple[int | str, Any]] = []
    for path, leaf in jax.tree_util.tree_flatten_with_path((args, kwargs))[0]:
        top, arg = path[0], path[1]
        out.append((arg.idx if top.idx == 0 else arg.key, leaf))  # type: ignore[attr-defined]
    return out


def leaf_labels(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """A readable name of the argument each leaf belongs to: ``dept (args[0])``, ``'y'``."""
    names = _positional_names(model, len(args))
    return [
        (f"{names[a]} (args[{a}])" if names[a] else f"args[{a}]") if isinstance(a, int) else repr(a)
        for a, _ in _leaf_args(args, kwargs)
    ]


def arg_entries(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[int | str]:
    """For each leaf, the ``static_argnames`` entry that names its argument."""
    names = _positional_names(model, len(args))
    return [(names[a] or a) if isinstance(a, int) else a for a, _ in _leaf_args(args, kwargs)]


def _selected(
    model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], static_argnames: Iterable[int | str]
) -> set[int | str]:
    """The positions and keywords that ``static_argnames`` names (a name of a
    positional parameter counts for the argument passed at its position)."""
    names = _positional_names(model, len(args))
    chosen: set[int | str] = set()
    for entry in static_argnames:
        if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
            if not -len(args) <= entry < len(args):
                raise ValueError(
                    f"static_argnames has position {entry}, but the model gets {len(args)} positional args"
                )
            chosen.add(int(entry) % len(args))
        elif isinstance(entry, str) and entry in kwargs:
            chosen.add(entry)
        elif isinstance(entry, str) and entry in names:
            chosen.add(names.index(entry))
        elif isinstance(entry, str):
            given = [n for n in names if n] + sorted(kwargs)
            raise ValueError(
                f"static_argnames names {entry!r}, which is no argument of this call (its arguments are {given}); "
                "name a keyword argument, a positional parameter of the model, or give a position."
            )
        else:
            raise TypeError(f"static_argnames holds names (str) and positions (int), got {entry!r}")
    return chosen


def static_leaves(
    model: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    static_argnames: Sequence[int | str],
) -> set[int]:
    """Positions (in ``tree_flatten`` order) of the array leaves kept concrete."""
    if not static_argnames:
        return set()
    chosen = _selected(model, args, kwargs, static_argnames)
    return {i for i, (a, _) in enumerate(_leaf_args(args, kwargs)) if a in chosen}


def numpy_args(args: tuple[Any, ...], kwargs: dict[str, Any], skip: set[int]) -> list[int | str]:
    """The arguments (positions, keywords) holding a NumPy array leaf not in ``skip``."""
    out: list[int | str] = []
    for i, (a, leaf) in enumerate(_leaf_args(args, kwargs)):
        if i not in skip and isinstance(leaf, (np.ndarray, np.generic)) and a not in out:
            out.append(a)
    return out


def concretization_error(err: BaseException) -> BaseException | None:
    """The tracer-conversion / concretization error ``err`` is, or was raised from."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, CONCRETIZATION_ERRORS):
            return err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
        seen += 1
    return None


def culprits(
    err: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any], traced: Iterable[int]
) -> tuple[list[int], bool]:
    """``(leaves, pinned)``: the traced leaves a concretization error is about,
    and whether JAX named them (``argument dynamic[i]`` in fit's compiled
    functions, ``argument args[j]`` in a jitted ``step``); else every traced leaf."""
    text, traced = str(err), set(traced)
    leaves = {int(i) for i in re.findall(r"argument dynamic\[(\d+)\]", text)}
    owners = [a for a, _ in _leaf_args(args, kwargs)]
    for j in re.findall(r"argument args\[(\d+)\]", text):
        leaves |= {i for i, a in enumerate(owners) if a == int(j)}
    leaves &= traced
    return (sorted(leaves), True) if leaves else (sorted(traced), False)


def explain(err: BaseException, names: list[str], pinned: bool, traced_by: str, fix: str) -> str:
    """The message for a model that needs a traced argument's concrete value."""
    which = ", ".join(names) if pinned or len(names) == 1 else f"one of {', '.join(names)}"
    return (
        f"the model needs the concrete value of {which or 'an array argument'}, but {traced_by} "
        f"({type(err).__name__}: {str(err).splitlines()[0]}). {fix}"
    )
