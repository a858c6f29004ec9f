"""``fit`` and ``fit_many``: the SVI step (``svi/step.py``) run in compiled chunks.

``fit`` runs steps in compiled chunks (``loop/chunks.py``; their length:
``loop/pacing.py``; the host loop between them, which ``fit_many`` shares:
``loop/host_loop.py``), shows a tqdm bar with the running loss between chunks
(``loop/progress.py``), stops on a non-finite step with the last finite state
(or skips such steps), and writes atomic checkpoints it resumes from bit for
bit (only for the run that wrote them: ``loop/run_identity.py``). It refuses
NaN data first (``model/data_check.py``), and stops on Ctrl-C at a chunk
boundary (``loop/interrupt.py``); XLA compiles on two compile threads while
the main thread traces and then waits (``loop/compile.py``), so that Ctrl-C is
seen even during a long compile. ``fit_many`` fits K seeds (or K datasets) at
once with ``vmap``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from jaxguides._caches import BoundedCache
from jaxguides._errors import FitInterrupted, NonFiniteLossError
from jaxguides.elbo.loss import ELBOLoss, elbo_loss
from jaxguides.loop import host_loop
from jaxguides.loop.args import (
    Static,
    combine,
    partition,
    with_concrete_args,
)
from jaxguides.loop.checkpoint import Checkpointer, opened, read_fit_checkpoint, resume_state
from jaxguides.loop.chunks import chunk_end, run_init, run_init_many
from jaxguides.loop.compile import compile_beside, wait_for
from jaxguides.loop.interrupt import current as current_interrupts
from jaxguides.loop.interrupt import interruptible
from jaxguides.loop.pacing import (
    Pacer,
    chunk_length,
    default_chunk,
)
from jaxguides.loop.progress import (
    begin_steps,
    nanmean,
    progress,
)
from jaxguides.loop.run_identity import run_record
from jaxguides.model.data_check import check_finite_data, nonfinite_members
from jaxguides.optim.canonical import canonical
from jaxguides.optim.optimizers import as_optax
from jaxguides.parallel.sharding import PlateLayout, place, shard_args
from jaxguides.svi.state import (
    SVIState,
)

__all__ = ["FitResult", "fit", "fit_many"]

# (guide, chunk's static args, argument avals) fit has compiled -> the chunk's
# last measured seconds per step (None until a chunk of >= 64 steps has run)
_SEEN = BoundedCache("chunk rates", max_size=4096)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What ``fit`` / ``fit_many`` return.

    Attributes:
        params: final params (stacked along a leading K axis for ``fit_many``).
        losses: per-step losses, ``np.ndarray[num_steps]`` (``[K, num_steps]``).
        state: the final :class:`SVIState` (resume or continue from it).
        num_skipped: steps skipped for a non-finite loss (``on_nonfinite="skip"``).
    """

    params: Any
    losses: np.ndarray
    state: SVIState
    num_skipped: Any = 0

    def best(self, window: int | None = None) -> FitResult:
        """The member of a ``fit_many`` result with the lowest final loss.

        The final loss is the mean over the last ``window`` steps (default: the
        last 10% of the steps), which is less noisy than one step's estimate.
        """
        losses = np.asarray(self.losses)
        if losses.ndim != 2:
            raise ValueError("best() picks among the K fits of fit_many; this result holds one fit")
        window = window or max(1, losses.shape[1] // 10)
        final = nanmean(losses[:, -window:], axis=1)
        final = np.where(np.isfinite(final), final, np.inf)
        i = int(np.argmin(final))
        pick = functools.partial(jax.tree.map, lambda x: x[i])
        return FitResult(pick(self.params), losses[i], pick(self.state), np.asarray(self.num_skipped)[i])


def _check_init(guide: Any, rng_key: jax.Array, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``init_to_value`` values against the supports the concrete args give, before
    compiling (under ``jit`` bounds that are model args are traced and unchecked).
    Runs the model once, eagerly, and only for ``init_to_value``."""
    if hasattr(guide, "check_init"):
        guide.check_init(rng_key, *args, **kwargs)


def _check_args(num_steps: Any, on_nonfinite: str, checkpoint_every: Any, chunk_size: Any) -> None:
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    for name, value in (("checkpoint_every", checkpoint_every), ("chunk_size", chunk_size)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _dtype(x: Any) -> Any:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def fit(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    num_steps: int,
    *args: Any,
    loss: Callable[..., jax.Array] | None = None,
    progress_bar: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    checkpoint_keep: int = 2,
    on_nonfinite: str = "raise",
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    shard_plates: dict[str, Any] | None = None,
    static_argnames: Sequence[int | str] = (),
    **kwargs: Any,
) -> FitResult:
    """Fit ``guide`` to ``model`` with ``optimizer`` for ``num_steps`` steps.

    Steps run in compiled chunks (a ``lax.while_loop``) of ``chunk_size``
    steps; by default the first chunk has 64 steps (none if an earlier fit ran
    this chunk: its rate is known) and later ones about 0.25 s of work each
    (at most 4,096 steps), one compilation for any run length.
    The progress bar names its phase (``fit: tracing``, ``fit: compiling``,
    then ``fit``) and shows ``loss (mean of last chunk)``; its last line gives
    the last chunk's mean and ``last=``, ``result.losses[-1]``. Compilation is
    cached per (model, guide, loss, optimizer, argument shapes); an optimizer
    built anew with the same settings (``optax.adam(1e-2)`` written inline)
    counts as the same one.

    Array arguments are checked once for NaN / inf before compiling; one that
    holds them makes the model run once, eagerly, and a ``ValueError`` names
    the observed site that takes them unmasked (or the argument, when they
    make another site's log density non-finite). Entries masked with
    ``obs_mask=`` or ``handlers.mask`` are fine.

    Ctrl-C (SIGINT, in the main thread) stops the fit at the next chunk
    boundary, or as soon as tracing and compiling return, and raises
    :class:`FitInterrupted` (a ``KeyboardInterrupt``) holding the ``params``,
    ``state``, ``step`` and ``losses`` of the last completed step, after
    writing the checkpoint when one is set. A second Ctrl-C ends the process
    at once, even while XLA compiles. Outside ``fit`` Python's handler is left
    as it was.

    Args:
        model, guide, optimizer: the NumPyro model, its guide, an optax optimizer.
        rng_key: PRNG key; the same key gives bit-identical results.
        num_steps: total number of steps (a resumed fit runs the remainder).
        *args, **kwargs: the model's arguments (arrays are traced; other values
            are static and key the compilation cache).
        static_argnames: model arguments kept concrete, for a model that reads
            data values in Python (``len(np.unique(idx))``, an ``if`` on a
            value): keyword names, positional parameter names or positions.
            Their array values become compile-time constants and key the
            compilation (by bytes, shape and dtype): each distinct value
            compiles anew, and a large array makes a large program. Without
            it, a model whose tracing fails on a traced value is traced once
            more with every NumPy array argument kept concrete, with a warning
            naming them (``jax.Array`` arguments stay traced: name them here).
        loss: ``loss(params, rng_key, *args, **kwargs)``; default ``elbo_loss``.
        progress_bar: show a tqdm bar.
        checkpoint: path of a checkpoint directory (written through Orbax,
            never unpickled). If it holds a checkpoint the fit resumes from its
            newest step; a step is saved every ``checkpoint_every`` steps, at
            the end, on a non-finite stop and on Ctrl-C, asynchronously (the
            next chunk runs while it is written; ``fit`` returns or raises once
            the last one is committed), each step committed atomically. It records
            its run (model and its config, guide, optimizer, loss, key, the
            arguments' shapes and dtypes and a fingerprint of their data), and
            a checkpoint of another run is refused with
            :class:`CheckpointError` naming what differs.
        checkpoint_every: steps between checkpoints (default: only at the end).
        checkpoint_keep: how many of the newest saved steps the directory keeps.
        on_nonfinite: ``"raise"`` stops at the first non-finite loss or
            gradient with :class:`NonFiniteLossError` holding the last finite
            params and state; ``"skip"`` leaves params unchanged on such steps,
            goes on, counts them in ``num_skipped`` and warns with the count
            (``RuntimeWarning``); when every step was skipped it raises
            :class:`NonFiniteLossError`.
        chunk_size: steps per compiled chunk (default: sized by time, above).
        mesh: a ``jax.sharding.Mesh`` to run on, data parallel (default: the
            default device). See ``jaxguides/parallel/sharding.py``.
        shard_plates: ``{plate name: mesh axis}``. The plate's data (array
            arguments whose leading axis has the plate's full size; pass a
            ``jax.Array`` already laid out on ``mesh`` to choose another axis)
            and its local latents (params and their optimizer state) are split
            along that axis; all else is replicated, and XLA reduces the
            gradient across devices. Params equal the one-device fit's up to
            float summation order (``rtol=1e-5, atol=1e-6`` after hundreds of
            Adam steps on a well-conditioned model). A sharded subsampled plate
            draws ``subsample_size / n`` rows on each of its ``n`` devices, from
            that device's own rows. Across processes (``jax.distributed``)
            every process calls ``fit`` alike, with a mesh over
            ``jax.devices()``; ``result.params`` are then global arrays
            (``multihost_utils.process_allgather`` brings them whole). Each
            process writes only its own shards of a checkpoint (on a filesystem
            all processes see) and reads back those of its devices in this
            fit's layout: bit for bit on the same layout; another mesh is fine.

    Returns:
        :class:`FitResult` with ``params``, ``losses`` (``np.ndarray[num_steps]``),
        the final ``state`` and ``num_skipped``.

    Raises:
        FitInterrupted: on Ctrl-C (``except jg.FitInterrupted as e: e.params``).
        NonFiniteLossError: a non-finite step (``on_nonfinite="raise"``), or
            every step skipped (``"skip"``).
        CheckpointError: ``checkpoint`` is damaged, crafted, in the old
            single-file format, or of another run.
        ValueError: non-finite data the model would use unmasked.

    Examples:
        >>> import jax, optax, numpyro, numpyro.distributions as dist, jaxguides as jg
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = jg.AutoNormal(model)
        >>> result = jg.fit(model, guide, optax.adam(0.05), jax.random.PRNGKey(0), 500,
        ...                 jax.numpy.ones(3), progress_bar=False)
        >>> result.losses.shape
        (500,)
    """
    if not isinstance(checkpoint_keep, int) or isinstance(checkpoint_keep, bool) or checkpoint_keep < 1:
        raise ValueError(f"checkpoint_keep must be an int >= 1, got {checkpoint_keep!r}")
    result = None
    try:
        with opened(checkpoint, checkpoint_keep) as checkpointer:  # returns or raises once the last save is committed
            options: dict[str, Any] = dict(
                loss=loss,
                progress_bar=progress_bar,
                checkpoint=checkpointer,
                checkpoint_every=checkpoint_every,
                on_nonfinite=on_nonfinite,
                chunk_size=chunk_size,
                mesh=mesh,
                shard_plates=shard_plates,
            )
            run = functools.partial(_fit, model, guide, optimizer, rng_key, num_steps, **options)
            result = with_concrete_args("fit", run, model, args, kwargs, static_argnames)
    except KeyboardInterrupt as err:
        if result is None or isinstance(err, FitInterrupted):
            raise
        # Ctrl-C while the last save was being committed: the finished fit, as the interrupt (the
        # checkpoint holds its last committed step)
        raise _interrupted_late(result) from err
    return result


@interruptible(lambda result: _interrupted_late(result))
def _fit(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    num_steps: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    concrete: set[int],
    *,
    loss: Callable[..., jax.Array] | None,
    progress_bar: bool,
    checkpoint: Checkpointer | None,
    checkpoint_every: int | None,
    on_nonfinite: str,
    chunk_size: int | None,
    mesh: jax.sharding.Mesh | None,
    shard_plates: dict[str, Any] | None,
) -> FitResult:
    """:func:`fit` with the array leaves at ``concrete`` kept concrete."""
    _check_args(num_steps, on_nonfinite, checkpoint_every, chunk_size)
    check_finite_data(model, args, kwargs)
    _check_init(guide, rng_key, args, kwargs)
    optimizer = canonical(as_optax(optimizer))  # an equal optimizer built anew reuses the compilation
    loss_fn = elbo_loss(model, guide) if loss is None else loss
    dynamic, static = partition(args, kwargs, concrete)
    layout = None
    if mesh is not None or shard_plates:  # data parallel: see jaxguides/parallel/sharding.py
        layout, rng_key, dynamic = _shard_inputs(mesh, shard_plates, guide, optimizer, rng_key, dynamic, static)  # type: ignore[arg-type]
        if isinstance(loss_fn, ELBOLoss):  # a subsampled plate split over n devices: drawn in n blocks
            loss_fn = loss_fn.stratified(layout.blocks())
    length = chunk_length(num_steps, chunk_size)
    chunk_static = dict(
        loss_fn=loss_fn, optimizer=optimizer, static=static, length=length, skip=on_nonfinite == "skip", layout=layout
    )
    end = chunk_end(num_steps, layout)
    init = functools.partial(run_init, guide=guide, optimizer=optimizer, static=static, layout=layout, loss_fn=loss_fn)
    resuming = checkpoint is not None and checkpoint.exists()
    run_id = run_record(model, guide, optimizer, loss, rng_key, args, kwargs) if checkpoint is not None else None
    payload = read_fit_checkpoint(os.fspath(checkpoint), run_id) if resuming else None  # type: ignore[arg-type]  # before compiling
    seen = (guide, tuple(sorted(chunk_static.items())), _avals((rng_key, end, dynamic)))
    first = seen not in _SEEN  # then compile the chunk ahead, beside init
    io = host_loop.IO
    run = functools.partial(io.run_chunk, **chunk_static)
    with progress(progress_bar, total=num_steps, desc="fit: tracing") as bar:
        # Tracing runs here; XLA compiles on the compile threads while this thread waits in Python,
        # so Ctrl-C is seen at once (and a second one ends the process) even during a long compile.
        compiling: list[concurrent.futures.Future[Any]] = []
        try:
            ahead = first and layout is None and not resuming  # the chunk, from init's shapes, beside init
            if ahead:
                compiling.append(io.compile_ahead(init, chunk_static, rng_key, end, dynamic))
            if first:
                compiling.append(compile_beside(init, rng_key, dynamic))
                bar.set_description("fit: compiling")
            wait_for(compiling)
            state = init(rng_key, dynamic)
            losses = np.full(num_steps, np.nan, np.float32)
            skipped = np.zeros((), np.int64)
            if payload is not None:
                state, saved, saved_skipped = resume_state(os.fspath(checkpoint), payload, state, num_steps)  # type: ignore[arg-type]
                state = state if layout is None else jax.tree.map(place, state, layout.state_shardings(state))
                n = min(len(saved), num_steps)
                losses[:n], skipped = saved[:n], np.asarray(saved_skipped, np.int64)
            if first and not ahead:  # the chunk, from the state itself (a resumed one, a sharded one)
                bar.set_description("fit: tracing")
                compiling.append(compile_beside(run, state, chunk_end(num_steps, layout), dynamic))
                bar.set_description("fit: compiling")
                wait_for(compiling)
        finally:  # XLA is never left compiling beside an exception (interpreter exit racing it crashed)
            wait_for(compiling)
        step = int(state.step) if resuming else 0  # init starts at 0: no wait for it before the first chunk
        if first:
            _SEEN.remember(seen, None)
        pacer = Pacer(num_steps, chunk_size, length, _SEEN.lookup(seen))
        saver = None if checkpoint is None else host_loop.Saver(checkpoint, checkpoint_every, run_id, step, io)
        begin_steps(bar, step, "fit")
        ran = host_loop.run_chunks(
            run, state, dynamic, losses, skipped, step, pacer=pacer, bar=bar, label="fit",
            interrupts=current_interrupts(), io=io, layout=layout, saver=saver, show_loss=progress_bar,
        )  # fmt: skip
    if saver is not None:
        saver.save_unless_saved(ran.state, ran.losses, ran.skipped, ran.step)
    if ran.rate is not None and seen in _SEEN:  # the next fit of this chunk starts at this rate
        _SEEN.remember(seen, ran.rate)
    num_skipped = int(ran.skipped)
    if on_nonfinite == "skip" and num_skipped:
        _report_skipped(ran.state, ran.losses, num_skipped, num_steps)
    return FitResult(ran.state.params, ran.losses, ran.state, num_skipped)


def _interrupted_late(result: FitResult) -> FitInterrupted:
    """Ctrl-C after the last chunk: the finished result, as the interrupt."""
    return FitInterrupted(int(np.max(result.state.step)), result.params, result.state, result.losses)


def _report_skipped(state: SVIState, losses: np.ndarray, skipped: int, num_steps: int) -> None:
    """``on_nonfinite="skip"``: a warning with the count, an error when no step counted."""
    if skipped >= num_steps:
        advice = (
            f"With on_nonfinite='skip' all {num_steps} steps were skipped, so the params are still the initial "
            "ones: check the data and the model for values outside a distribution's support."
        )
        raise NonFiniteLossError(0, state.params, state, losses[:0].copy(), advice=advice)
    warnings.warn(
        f"fit: {skipped} of {num_steps} steps were skipped for a non-finite loss or gradient "
        "(on_nonfinite='skip'): they left the params as they were, and their losses are NaN in result.losses.",
        RuntimeWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside jaxguides: a warning points at the user's call."""
    frame: Any = sys._getframe(1)
    level, package = 1, os.path.dirname(__file__)
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == package:
        frame, level = frame.f_back, level + 1
    return level


def _avals(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), _dtype(x)) for x in leaves)


def _shard_inputs(
    mesh: jax.sharding.Mesh,
    shard_plates: dict[str, Any] | None,
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_key: jax.Array,
    dynamic: list[Any],
    static: Static,
) -> tuple[PlateLayout, jax.Array, list[Any]]:
    """The layout of a sharded fit, and its key and data as global arrays on ``mesh``."""
    layout = PlateLayout.build(mesh, shard_plates)
    abstract = jax.eval_shape(
        functools.partial(run_init, guide=guide, optimizer=optimizer, static=static), rng_key, dynamic
    )
    layout.check(abstract.params.sites)
    args, kwargs = combine(dynamic, static)
    args, kwargs = shard_args(args, mesh, dict(layout.plates), abstract.params.sites, kwargs=kwargs)
    fixed = {i for i, _ in static.leaves}  # the same leaves as before stay static (concrete ones too)
    dynamic = [None if i in fixed else x for i, x in enumerate(partition(args, kwargs)[0])]
    return layout, place(rng_key, layout.replicated), dynamic


def fit_many(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_keys: jax.Array,
    num_steps: int,
    *args: Any,
    batched_args: bool = False,
    loss: Callable[..., jax.Array] | None = None,
    progress_bar: bool = True,
    chunk_size: int | None = None,
    static_argnames: Sequence[int | str] = (),
    **kwargs: Any,
) -> FitResult:
    """K fits at once with ``vmap``: one per key in ``rng_keys`` (shape ``[K, 2]``).

    With ``batched_args=True`` every array argument has a leading K axis (K
    datasets of the same shape), else all fits see the same data. A fit whose
    loss turns non-finite keeps its last finite params for that step and goes
    on (its count is in ``num_skipped[k]``). ``result.best()`` picks the fit
    with the lowest final loss. ``static_argnames`` keeps arguments concrete
    as in :func:`fit` (with the same fallback); a concrete argument is shared
    by the K fits, never batched. Non-finite data is refused as in
    :func:`fit` (each dataset with ``batched_args``), and Ctrl-C raises
    :class:`FitInterrupted` with the K fits' state at the last chunk boundary.

    Returns:
        :class:`FitResult` with params stacked on a leading K axis and
        ``losses`` of shape ``[K, num_steps]``.
    """
    options: dict[str, Any] = dict(
        batched_args=batched_args, loss=loss, progress_bar=progress_bar, chunk_size=chunk_size
    )
    run = functools.partial(_fit_many, model, guide, optimizer, rng_keys, num_steps, **options)
    return with_concrete_args("fit_many", run, model, args, kwargs, static_argnames)


@interruptible(lambda result: _interrupted_late(result))
def _fit_many(
    model: Callable[..., Any],
    guide: Any,
    optimizer: optax.GradientTransformation,
    rng_keys: jax.Array,
    num_steps: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    concrete: set[int],
    *,
    batched_args: bool,
    loss: Callable[..., jax.Array] | None,
    progress_bar: bool,
    chunk_size: int | None,
) -> FitResult:
    """:func:`fit_many` with the array leaves at ``concrete`` kept concrete."""
    _check_args(num_steps, "skip", None, chunk_size)
    dynamic, static = partition(args, kwargs, concrete)
    if batched_args:  # one dataset is enough to check init values against their supports
        _check_init(guide, rng_keys[0], *combine([None if x is None else x[0] for x in dynamic], static))
    else:
        _check_init(guide, rng_keys[0], args, kwargs)
    optimizer = canonical(as_optax(optimizer))
    loss_fn = elbo_loss(model, guide) if loss is None else loss
    for member in nonfinite_members(dynamic) if batched_args else [None]:  # NaN data: named before compiling
        data = (
            (args, kwargs) if member is None else combine([None if x is None else x[member] for x in dynamic], static)
        )
        check_finite_data(model, *data)
    k = len(rng_keys)
    io = host_loop.IO
    init = functools.partial(run_init_many, guide=guide, optimizer=optimizer, static=static, batched_args=batched_args)
    length = chunk_length(num_steps, chunk_size) if chunk_size else default_chunk(num_steps)
    run = functools.partial(
        io.run_chunk_many,
        batched_args=batched_args,
        loss_fn=loss_fn,
        optimizer=optimizer,
        static=static,
        length=length,
        skip=True,
    )
    with progress(progress_bar, total=num_steps, desc=f"fit x{k}: tracing") as bar:
        compiling: list[concurrent.futures.Future[Any]] = []
        try:  # compiled on the compile threads, as in fit
            compiling.append(compile_beside(init, rng_keys, dynamic))
            bar.set_description(f"fit x{k}: compiling")
            wait_for(compiling)
            state = init(rng_keys, dynamic)
            bar.set_description(f"fit x{k}: tracing")
            compiling.append(compile_beside(run, state, chunk_end(num_steps, None), dynamic))
            bar.set_description(f"fit x{k}: compiling")
            wait_for(compiling)
        finally:  # XLA is never left compiling beside an exception
            wait_for(compiling)
        losses = np.full((k, num_steps), np.nan, np.float32)
        begin_steps(bar, 0, f"fit x{k}")
        ran = host_loop.run_chunks(
            run, state, dynamic, losses, np.zeros(k, np.int64), 0, pacer=Pacer(num_steps, length, length),
            bar=bar, label=f"fit x{k}", interrupts=current_interrupts(), io=io, show_loss=progress_bar,
        )  # fmt: skip
    return FitResult(ran.state.params, ran.losses, ran.state, ran.skipped)
