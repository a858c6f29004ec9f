"""Leave out NumPyro's support check where, inside a fit, it cannot change anything.

With validation on (NumPyro's default), ``log_prob`` of a distribution is
``where(value in support, log_prob, -inf)``. For a distribution whose support
is all of R (``real``, ``real_vector``, ...), "in support" only means
"finite", and a non-finite value already gives a non-finite density (NaN or
-inf), so the loss is non-finite either way and the step is refused by
``_update``'s non-finite guard. What the check does cost is an elementwise
pass and a select in the forward and backward pass of every step (measured in
``bench/RESULTS.md``).

:func:`skip_real_support_checks` runs a model with those checks left out and
every other check kept: a constrained support (``positive``, ``simplex``,
...) is still checked, since there a value outside the support can have a
finite, wrong density. ``ImproperUniform`` keeps its check: its density does
not depend on the value, so the check is the only thing that sees it.
Parameter checks at construction are untouched (under ``jit`` they cannot
raise anyway).
"""

from __future__ import annotations

import copy
from typing import Any

import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.primitives import Messenger

__all__ = ["skip_real_support_checks", "without_real_support_check"]


def _is_real(support: Any) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def without_real_support_check(fn: dist.Distribution) -> dist.Distribution:
    """``fn``, or a shallow copy of it, with the support check of every
    distribution in its ``base_dist`` chain whose support is real-valued off.

    The same density for every finite value; ``fn`` itself is not changed.
    """
    base = getattr(fn, "base_dist", None)
    new_base = without_real_support_check(base) if isinstance(base, dist.Distribution) else base
    try:
        skip = fn._validate_args and _is_real(fn.support) and not isinstance(fn, dist.ImproperUniform)
    except NotImplementedError:  # a distribution without a support
        skip = False
    if not skip and new_base is base:
        return fn
    out = copy.copy(fn)
    if skip:
        out._validate_args = False
    if new_base is not base:
        out.base_dist = new_base  # type: ignore[attr-defined]
    return out


class skip_real_support_checks(Messenger):  # noqa: N801 - a handler, named as NumPyro's are
    """Handler: every sample site's distribution through
    :func:`without_real_support_check` (for the ELBO's run of the model)."""

    def process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and isinstance(msg["fn"], dist.Distribution):
            msg["fn"] = without_real_support_check(msg["fn"])
