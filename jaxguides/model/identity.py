"""What tells one model callable from another, so a guide refuses params of another model.

Params record the model they were made for. Its name (module and qualified
name) is not enough: two closures of one factory, or two ``functools.partial``
of one function, share it. What sets them apart is the Python values they
carry -- the cells a closure reads, a partial's arguments, the attributes of a
NumPyro handler and the model it wraps, the fields of a frozen dataclass --
and :func:`model_config` lists those. :func:`carried` is the one walk over
what a callable carries; ``optim/canonical.py`` fingerprints the same values.

Only values that cannot change between ``init`` and a later call count: None,
bools, numbers, strings, enums, classes, tuples and frozensets of these, and
functions (by name and, a few levels deep, their own config). Arrays are data
(as ``fit`` treats them: traced, not static), so params fitted on one data set
serve a model closed over another; mutable objects (lists, dicts, other
objects, a cell the model rebinds with ``nonlocal``) can change between calls,
so they are left out rather than risk refusing a model's own params. The
result is plain strings, the same in every process, so it can live in the
params' treedef and survive pickling and checkpoints.
"""

from __future__ import annotations

import dataclasses
import dis
import enum
import functools
import hashlib
import types
from collections.abc import Callable, Iterator
from typing import Any

from numpyro.primitives import Messenger

__all__ = [
    "ATOMS",
    "Carried",
    "Config",
    "carried",
    "config_difference",
    "describe",
    "innermost",
    "model_config",
    "model_name",
]

Config = tuple[tuple[str, str], ...]
"""``((label, value description), ...)``: e.g. ``(("k", "2"), ("partial args[0]", "'a'"))``."""

Carried = tuple[tuple[str, Any], ...]
"""``((label, value), ...)``: e.g. ``(("k", 2), ("partial args[0]", "a"), ("self", obj))``."""

ATOMS = (type(None), bool, int, float, complex, str, bytes, enum.Enum, type(Ellipsis))
"""The types :func:`describe` gives by ``repr``: immutable, the same in every process."""
_DEPTH = 3  # levels of nested functions / tuples described; deeper values are left out
_MAX_LEN = 120  # a longer description is shortened to its start and a digest


def model_name(model: Callable[..., Any]) -> str:
    """A stable name for a model callable (module + qualified name)."""
    target = model
    while hasattr(target, "func"):  # functools.partial
        target = target.func
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{getattr(target, '__module__', '?')}.{qualname}"


def model_config(model: Callable[..., Any]) -> Config:
    """The immutable Python values that set ``model`` apart from other callables of its name.

    Examples:
        >>> import functools
        >>> def sized(k, name="x"):
        ...     pass
        >>> model_config(functools.partial(sized, 3, name="y"))
        (('partial args[0]', '3'), ('partial name', "'y'"))
    """
    return tuple(_config(model, _DEPTH))


def config_difference(made_for: Config, this: Config) -> str:
    """Says which values differ, e.g. ``"k: 2 in the params' model, 3 in this guide's"``."""
    a, b = dict(made_for), dict(this)
    parts = [
        f"{label}: {a.get(label, 'absent')} in the params' model, {b.get(label, 'absent')} in this guide's"
        for label in sorted(a.keys() | b.keys())
        if a.get(label) != b.get(label)
    ]
    return "; ".join(parts)


def carried(fn: Any, *, rebound: bool = True, defaults: bool = False) -> Carried:
    """The labelled Python values a callable carries, ``((label, value), ...)``.

    Labels and order: under a ``functools.partial``, what its ``func`` carries,
    then ``"partial args[i]"`` and ``"partial <keyword>"`` (sorted); under a
    bound method, what its function carries, then ``"self"``; a function's
    filled closure cells by free variable name (empty cells left out, cells
    the function rebinds with ``nonlocal`` too unless ``rebound``), then with
    ``defaults`` its ``"defaults[i]"`` and ``"default <keyword>"``; a NumPyro
    handler's attributes and a frozen dataclass's fields by name (sorted).
    Anything else carries ``()``.

    Examples:
        >>> import functools
        >>> def scaled(x, k):
        ...     return k * x
        >>> carried(functools.partial(scaled, k=2))
        (('partial k', 2),)
    """
    if isinstance(fn, functools.partial):
        keywords = sorted(fn.keywords.items(), key=lambda kv: kv[0])
        labelled = [(f"args[{i}]", a) for i, a in enumerate(fn.args)] + keywords
        inner = carried(fn.func, rebound=rebound, defaults=defaults)
        return inner + tuple((f"partial {label}", v) for label, v in labelled)
    if isinstance(fn, types.MethodType):
        return carried(fn.__func__, rebound=rebound, defaults=defaults) + (("self", fn.__self__),)
    if isinstance(fn, types.FunctionType):
        left_out = frozenset() if rebound or not fn.__closure__ else _rebound(fn.__code__)
        cells = tuple(
            (name, cell.cell_contents)
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ())
            if name not in left_out and _filled(cell)
        )
        if not defaults:
            return cells
        positional = tuple((f"defaults[{i}]", v) for i, v in enumerate(fn.__defaults__ or ()))
        keyword = tuple((f"default {k}", v) for k, v in (fn.__kwdefaults__ or {}).items())
        return cells + positional + keyword
    if isinstance(fn, Messenger):  # a NumPyro handler: its arguments and the model it wraps
        return _fields(vars(fn))
    if _is_frozen_dataclass(fn):
        return _fields({f.name: getattr(fn, f.name) for f in dataclasses.fields(fn)})
    return ()


def innermost(fn: Any) -> Any:
    """``fn`` under its partials and bound methods: what runs on :func:`carried`'s values."""
    while isinstance(fn, (functools.partial, types.MethodType)):
        fn = fn.func if isinstance(fn, functools.partial) else fn.__func__
    return fn


def _fields(fields: dict[str, Any]) -> Carried:
    named = ((k, v) for k, v in fields.items() if not k.startswith("__"))  # not functools.wraps' copies
    return tuple(sorted(named, key=lambda kv: kv[0]))


def _config(fn: Any, depth: int) -> Iterator[tuple[str, str]]:
    """``(label, description)`` of each value ``fn`` carries that counts (see module doc)."""
    return ((label, d) for label, v in carried(fn, rebound=False) if (d := describe(v, depth)) is not None)


def describe(value: Any, depth: int) -> str | None:
    """A description of an immutable value, ``depth`` levels deep, the same in every
    process; ``None``: not counted (see module doc).

    Examples:
        >>> describe((1, "a"), 3)
        "(1, 'a')"
    """
    if isinstance(value, ATOMS):
        return _short(repr(value))
    if depth <= 0:
        return None
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (tuple, frozenset)):
        parts = [describe(v, depth - 1) for v in value]
        if parts and all(p is None for p in parts):
            return None
        if isinstance(value, frozenset):
            return _short("frozenset({" + ", ".join(sorted(p or "_" for p in parts)) + "})")
        return _short("(" + ", ".join(p or "_" for p in parts) + ("," if len(parts) == 1 else "") + ")")
    callable_ = isinstance(value, (functools.partial, types.MethodType, types.FunctionType, Messenger))
    if callable_ or _is_frozen_dataclass(value):
        inner = ", ".join(f"{k}={d}" for k, d in _config(value, depth - 1))
        return _short(model_name(value) + (f"({inner})" if inner else ""))
    if callable(value) and hasattr(value, "__qualname__"):  # builtins, jitted functions: by name
        return model_name(value)
    return None


def _short(description: str) -> str:
    if len(description) <= _MAX_LEN:
        return description
    digest = hashlib.sha256(description.encode()).hexdigest()[:16]
    return f"{description[:60]}... (sha256 {digest})"


@functools.lru_cache(maxsize=256)  # a pure function of an immutable code object, read on every guide call
def _rebound(code: types.CodeType) -> frozenset[str]:
    """Names a function (or a function nested in it) rebinds with ``nonlocal``."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_DEREF", "DELETE_DEREF")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _rebound(const)
    return frozenset(names)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (reading an empty cell raises)
    except ValueError:
        return False
    return True


def _is_frozen_dataclass(value: Any) -> bool:
    params = getattr(type(value), "__dataclass_params__", None)
    return params is not None and params.frozen and not isinstance(value, type)
