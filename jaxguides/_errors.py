"""Exceptions raised by jaxguides.

Every error names the site (or file, or step) it is about and says what to do.
They subclass the builtin a user would catch anyway (``ValueError``,
``FloatingPointError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ModelTraceError",
    "NonFiniteLossError",
    "ParamsMismatchError",
    "SiteError",
]


class SiteError(ValueError):
    """A latent site cannot be handled as asked (discrete, no bijection, bad shape, ...).

    Attributes:
        site: name of the offending sample site.
    """

    def __init__(self, site: str, message: str):
        super().__init__(message)
        self.site = site


class ModelTraceError(RuntimeError):
    """The model raised while jaxguides was tracing it.

    The original exception is chained as ``__cause__``; ``site`` is the last
    site the model reached (``None`` if it failed before the first one).
    """

    def __init__(self, site: str | None, message: str):
        super().__init__(message)
        self.site = site


class ParamsMismatchError(ValueError):
    """Params were made by another guide type or for another model."""


class NonFiniteLossError(FloatingPointError):
    """A step produced a non-finite loss or gradient.

    Attributes:
        step: the (0-based) step at which it happened.
        params: the last params whose loss and gradient were finite.
        state: the full last finite ``SVIState`` (params, optimizer state, key, step).
        losses: the per-step losses up to (not including) the bad step.
    """

    def __init__(self, step: int, params: Any, state: Any = None, losses: Any = None):
        super().__init__(
            f"non-finite loss or gradient at step {step}; the last finite params "
            f"(before step {step}) are in `error.params` and the full state in "
            "`error.state`. Lower the learning rate, check the model for values "
            "outside a distribution's support, or pass `on_nonfinite='skip'`."
        )
        self.step = step
        self.params = params
        self.state = state
        self.losses = losses


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, corrupted or of another fit."""

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"checkpoint {path!r} cannot be used: {reason}. The file was left as "
            "it is; delete or move it to start the fit afresh."
        )
        self.path = path
