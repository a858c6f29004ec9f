"""Exceptions raised by jaxguides.

Every error names the site (or file, or step) it is about and says what to do.
They subclass the builtin a user would catch anyway (``ValueError``,
``FloatingPointError``, ``KeyboardInterrupt``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "FitInterrupted",
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

    def __init__(self, step: int, params: Any, state: Any = None, losses: Any = None, advice: str | None = None):
        advice = advice or (
            "Lower the learning rate, check the model for values outside a "
            "distribution's support, or pass `on_nonfinite='skip'`."
        )
        super().__init__(
            f"non-finite loss or gradient at step {step}; the last finite params "
            f"(before step {step}) are in `error.params` and the full state in "
            f"`error.state`. {advice}"
        )
        self.step = step
        self.params = params
        self.state = state
        self.losses = losses


class CheckpointError(ValueError):
    """A checkpoint is unreadable, truncated, corrupted, in an old format or of another fit."""

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"checkpoint {path!r} cannot be used: {reason}. It was left as "
            "it is; delete or move it to start the fit afresh."
        )
        self.path = path


class FitInterrupted(KeyboardInterrupt):
    """``fit`` / ``fit_many`` stopped on Ctrl-C (SIGINT) at a chunk boundary.

    A ``KeyboardInterrupt``, so a script stops as it would anyway; catch it to
    keep the work done: ``except jg.FitInterrupted as e: e.params``.

    Attributes:
        step: the steps completed (0 if interrupted before the first chunk).
        params: the params after ``step`` steps (the initial params at step 0).
        state: the full ``SVIState`` after ``step`` steps (resume from it).
        losses: the per-step losses of those steps.
        checkpoint: the checkpoint file written with that state, or ``None``.
    """

    def __init__(self, step: int, params: Any, state: Any = None, losses: Any = None, checkpoint: str | None = None):
        saved = f"; it is saved in {checkpoint!r}, which the same call resumes" if checkpoint else ""
        super().__init__(
            f"fit interrupted after step {step}: its params are in `error.params` and its full "
            f"state in `error.state`{saved}. A second Ctrl-C during a fit exits at once."
        )
        self.step = step
        self.params = params
        self.state = state
        self.losses = losses
        self.checkpoint = checkpoint
