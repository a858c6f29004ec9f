"""NaN or inf in the data, found before compiling instead of as a NaN loss at step 0.

A NaN in an observed array makes every step's loss NaN: ``fit`` would stop at
step 0 (or skip every step) with nothing pointing at the data. So ``fit``
looks at its array arguments once, on the host (a sum, which allocates
nothing, and an exact count only when the sum is not finite). Only when one
holds a non-finite value does it run the model once, eagerly
(``handlers.trace(handlers.seed(model, 0))``, subsampled plates given all
their rows) and look at the log density of each site:

- an observed site whose value holds non-finite entries is fine when its log
  density is finite, i.e. every such entry is masked (``obs_mask=`` or
  ``handlers.mask``: NumPyro replaces masked values before ``log_prob``);
  otherwise the error names the site;
- a non-finite argument no observed site holds (a covariate) is fine when every
  site's log density stays finite (the model replaces the values itself);
  otherwise the error names the argument and the site it reaches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.distribution import validation_enabled

from jaxguides.model.concrete import leaf_labels

__all__ = ["check_finite_data", "nonfinite_count", "nonfinite_members"]

_FIX = (
    "Drop or fill those entries, or mask them: numpyro.sample(name, d, obs=y, obs_mask=jnp.isfinite(y)), "
    "or `with numpyro.handlers.mask(mask=...)` around the site (a masked entry is not used)."
)


def nonfinite_count(x: Any) -> int:
    """How many entries of an array are NaN or infinite (0 for integer and bool arrays)."""
    dtype = np.dtype(x.dtype) if not _is_key(x) else None
    if dtype is None or dtype.kind not in "fc":
        return 0
    if isinstance(x, jax.Array) and (not x.is_fully_addressable or any(d.platform != "cpu" for d in x.devices())):
        return int(jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)))  # on its own device(s)
    host = np.asarray(x)
    with np.errstate(all="ignore"):  # a sum of large finite values may overflow: then count exactly
        if np.isfinite(np.add.reduce(host, axis=None)):
            return 0
    return int(host.size - np.count_nonzero(np.isfinite(host)))


def nonfinite_members(leaves: list[Any]) -> list[int]:
    """The members ``k`` of batched leaves (leading K axis; ``None`` for a static
    leaf) that hold a non-finite value, found as :func:`nonfinite_count` does."""
    bad: set[int] = set()
    for x in leaves:
        if x is not None and nonfinite_count(x):
            finite = np.isfinite(np.asarray(x)).reshape(np.shape(x)[0], -1).all(axis=1)
            bad.update(int(k) for k in np.flatnonzero(~finite))
    return sorted(bad)


def check_finite_data(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse non-finite data the model would use unmasked (see module doc).

    Raises:
        ValueError: naming the observed site (or the argument) and the fix.
    """
    leaves = jax.tree.leaves((args, kwargs))
    counts = {i: n for i, x in enumerate(leaves) if _is_array(x) and (n := nonfinite_count(x))}
    if not counts:
        return
    labels = leaf_labels(model, args, kwargs)
    held = ", ".join(
        f"{labels[i]} holds {n} non-finite value{'s' if n > 1 else ''} (NaN or inf)" for i, n in counts.items()
    )
    unmasked, reached = [], None
    # NumPyro's argument checks would refuse the NaN itself, and its support check warns on it
    with warnings.catch_warnings(), validation_enabled(False):
        warnings.simplefilter("ignore")
        try:
            sites = _trace(model, args, kwargs)
        except Exception as err:  # noqa: BLE001 - the data is what to fix first
            message = f"fit: {held}, and the model could not be run on it to find the site it reaches ({err}). {_FIX}"
            raise ValueError(message) from err
        for name, site in sites.items():
            finite = _finite_log_prob(site)
            if site["is_observed"] and not finite and (n := nonfinite_count(np.asarray(site["value"]))):
                unmasked.append(f"{name!r} ({n} of them)")
            elif not finite and reached is None:
                reached = name
    if unmasked:
        raise ValueError(
            f"fit: {held}, and observed site{'s' if len(unmasked) > 1 else ''} {', '.join(unmasked)} "
            f"take{'s' if len(unmasked) == 1 else ''} them unmasked, so every step's loss would be NaN. {_FIX}"
        )
    if reached is not None:
        raise ValueError(
            f"fit: {held}; no observed site holds them, but they make the log density of site {reached!r} "
            f"non-finite, so every step's loss would be NaN. Drop or fill those entries, or mask the sites they "
            "reach (`with numpyro.handlers.mask(mask=...)`: a masked entry is not used)."
        )


def _trace(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model's sample sites from one eager run, its subsampled plates given every row."""
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
    full = {
        name: jnp.arange(site["args"][0])
        for name, site in trace.items()
        if site["type"] == "plate" and site["args"][1] is not None and site["args"][1] < site["args"][0]
    }
    if full:  # (NumPyro warns that the subsample does not match subsample_size)
        trace = handlers.trace(handlers.seed(handlers.substitute(model, data=full), 0)).get_trace(*args, **kwargs)
    return {name: site for name, site in trace.items() if site["type"] == "sample"}


def _finite_log_prob(site: dict[str, Any]) -> bool:
    try:
        return _all_finite(site["fn"].log_prob(site["value"]))
    except Exception:  # noqa: BLE001 - a log density that cannot be evaluated here is not the data's fault
        return True


def _all_finite(x: Any) -> bool:
    x = np.asarray(x)
    return x.dtype.kind not in "fc" or bool(np.all(np.isfinite(x)))


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
