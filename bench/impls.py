"""The implementations under test, each behind the same small interface.

An implementation is built with ``(bench, size, guide, data)``; building it
includes the *first finished step* (trace, init, compile, one step), so the
time to construct it is the time to first step. ``run(steps)`` then returns
``(seconds per step, losses)`` for a steady-state run of ``steps`` steps.

* ``jg_fit`` / ``jg_fit_bar``: ``jaxguides.fit`` without / with progress bar.
* ``jg_scan``: ``jaxguides.svi(...).step`` in the user's own jitted ``lax.scan``.
* ``np_run`` / ``np_run_bar``: NumPyro ``SVI.run`` without / with progress bar.
* ``np_update``: a Python loop over ``jax.jit(svi.update)``.
* ``floor``: hand-written mean-field ELBO (or MAP) step in a jitted ``lax.scan``;
  a model's own params (``Bench.floor_params``) are trained beside the guide's
  as point values, as NumPyro's SVI trains them.

All use ``optax.adam(bench.lr)`` and start from the same point: 0 in
unconstrained space (``init_to_uniform(radius=0)`` for the guides), scale 0.1,
so their final losses are comparable. A model's own params start from their
deterministic init (see ``Bench.floor_params``) in every implementation.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy import stats
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoNormal
from numpyro.infer.initialization import init_to_uniform

import jaxguides as jg
from bench.models import Bench, Data, Size

IMPLS = ("jg_fit", "jg_fit_bar", "jg_scan", "np_run", "np_run_bar", "np_update", "floor")
INIT_SCALE = 0.1
INIT = init_to_uniform(radius=0.0)  # 0 in unconstrained space, where the floor starts too
MIN_DIFFERENCE_S = 0.5  # NumPyro's svi.run is timed as a difference of two run lengths at least this far apart


def split_static(data: Data) -> tuple[tuple[jax.Array, ...], Callable[[tuple[Any, ...]], Data]]:
    """Array arguments (traced) apart from Python values (closed over)."""
    is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in data]
    arrays = tuple(x for x, a in zip(data, is_array) if a)

    def rebuild(arrs: tuple[Any, ...]) -> Data:
        it = iter(arrs)
        return tuple(next(it) if a else x for x, a in zip(data, is_array))

    return arrays, rebuild


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def _now() -> np.ndarray:
    """(wall, CPU of this process) seconds: on a loaded machine the CPU time is the steadier."""
    return np.array([time.perf_counter(), time.process_time()])


class Impl:
    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``([wall, CPU] seconds per step, losses)`` of a steady-state run of ``steps``."""
        raise NotImplementedError


# ---- jaxguides --------------------------------------------------------------------------
def _jg_guide(bench: Bench, guide: str) -> Any:
    if guide == "normal":
        return jg.AutoNormal(bench.model, init_loc_fn=INIT, init_scale=INIT_SCALE)
    return jg.AutoDelta(bench.model, init_loc_fn=INIT)


class JgFit(Impl):
    def __init__(self, bench: Bench, size: Size, guide: str, data: Data, progress_bar: bool = False):
        self.fit, self.data, self.bar = jg.fit, data, progress_bar
        self.model, self.guide, self.opt = bench.model, _jg_guide(bench, guide), optax.adam(bench.lr)
        self.warm, self.key = 0, jax.random.PRNGKey(1)  # an input, as the floor's: made outside the timed runs
        _block(self._fit(1).params)

    def _fit(self, steps: int) -> Any:
        return self.fit(self.model, self.guide, self.opt, self.key, steps, *self.data, progress_bar=self.bar)

    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        if self.warm != steps:
            _block(self._fit(steps).params)  # compile this chunk length
            self.warm = steps
        t = _now()
        result = self._fit(steps)
        _block(result.params)
        return (_now() - t) / steps, np.asarray(result.losses)


def loss_only(out: Any) -> tuple[Any, Any]:
    """``(state, info.loss)`` of ``svi``'s step: what a user's loop keeps (the flags are dead code)."""
    state, info = out
    return state, info.loss


class JgScan(Impl):
    def __init__(self, bench: Bench, size: Size, guide: str, data: Data):
        self.arrays, self.rebuild = split_static(data)
        self.algo = jg.svi(bench.model, _jg_guide(bench, guide), optax.adam(bench.lr))
        rebuild, algo = self.rebuild, self.algo
        self.state = jax.jit(lambda key, arrs: algo.init(key, *rebuild(arrs)))(jax.random.PRNGKey(1), self.arrays)
        step = jax.jit(lambda s, arrs: loss_only(algo.step(s, *rebuild(arrs))))
        self.state, loss = _block(step(self.state, self.arrays))
        self.loops: dict[int, Any] = {}

    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        algo, rebuild = self.algo, self.rebuild
        if steps not in self.loops:

            @jax.jit
            def loop(state: Any, arrs: Any) -> Any:
                return jax.lax.scan(lambda s, _: loss_only(algo.step(s, *rebuild(arrs))), state, None, length=steps)

            _block(loop(self.state, self.arrays))  # compile; the result is dropped
            self.loops[steps] = loop
        t = _now()
        _, losses = _block(self.loops[steps](self.state, self.arrays))
        return (_now() - t) / steps, np.asarray(losses)


# ---- NumPyro ------------------------------------------------------------------------------
def _np_svi(bench: Bench, guide: str) -> Any:
    if guide == "normal":
        g = AutoNormal(bench.model, init_loc_fn=INIT, init_scale=INIT_SCALE)
    else:
        g = AutoDelta(bench.model, init_loc_fn=INIT)
    return SVI(bench.model, g, optax.adam(bench.lr), Trace_ELBO())


def _persistent_cache() -> None:
    """NumPyro's ``svi.run`` re-traces and re-compiles on every call; a persistent
    cache (switched on after the first step is timed) makes later calls cheap, and
    the steady-state time is a difference of two run lengths anyway."""
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench-cache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class NpRun(Impl):
    def __init__(self, bench: Bench, size: Size, guide: str, data: Data, progress_bar: bool = False):
        self.svi, self.data, self.bar = _np_svi(bench, guide), data, progress_bar
        result = self.svi.run(jax.random.PRNGKey(1), 1, *data, progress_bar=progress_bar)
        _block(result.params)
        self.state, self.warm = result.state, 0
        _persistent_cache()

    def _run(self, steps: int) -> tuple[np.ndarray, Any]:
        t = _now()
        result = self.svi.run(jax.random.PRNGKey(1), steps, *self.data, progress_bar=self.bar, init_state=self.state)
        _block(result.params)
        return _now() - t, result

    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``(T(long) - T(short)) / (long - short)``: the re-tracing every call costs
        cancels; ``long`` grows until the difference is ``MIN_DIFFERENCE_S``."""
        short = max(steps // 5, 1)
        if not self.warm:
            self._run(short), self._run(steps)  # fill the persistent cache
            self.warm = steps
            while True:  # find a long run whose extra steps take long enough to time
                t_short, _ = self._run(short)
                t_long, _ = self._run(self.warm)
                if t_long[0] - t_short[0] >= MIN_DIFFERENCE_S or self.warm >= 200_000:
                    break
                per_step = max(t_long[0] - t_short[0], 1e-3) / (self.warm - short)
                self.warm = min(int(self.warm * 1.2 + MIN_DIFFERENCE_S / per_step), 200_000)
        t_short, _ = self._run(short)
        t_long, result = self._run(self.warm)
        # the losses of `steps` steps (a prefix of the long run), comparable with the others'
        return np.maximum(t_long - t_short, 0.0) / (self.warm - short), np.asarray(result.losses)[:steps]


class NpUpdate(Impl):
    def __init__(self, bench: Bench, size: Size, guide: str, data: Data):
        self.svi = _np_svi(bench, guide)
        self.arrays, rebuild = split_static(data)
        svi = self.svi
        self.state = svi.init(jax.random.PRNGKey(1), *data)
        self.update = jax.jit(lambda s, arrs: svi.update(s, *rebuild(arrs)))
        self.state, _ = _block(self.update(self.state, self.arrays))

    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        state, losses = self.state, []
        for _ in range(min(steps, 20)):  # warm the dispatch path; then start again
            state, _ = self.update(state, self.arrays)
        _block(state)
        state = self.state
        t = _now()
        for _ in range(steps):
            state, loss = self.update(state, self.arrays)
            losses.append(loss)
        _block(state)
        dt = (_now() - t) / steps
        return dt, np.asarray(jax.device_get(losses))


# ---- the hand-written floor -----------------------------------------------------------------
def floor_loss(bench: Bench, size: Size, guide: str) -> Callable[..., jax.Array]:
    """Negative ELBO (mean field) or negative log joint (MAP) in unconstrained space."""
    shapes = bench.floor_sites(size)

    def loss(params: dict[str, Any], key: jax.Array, data: Data) -> jax.Array:
        k_eps, k_model = jax.random.split(key)
        point = params.get("point", {})  # the model's own params: point values beside the latents
        if guide == "delta":  # MAP in constrained space, as AutoDelta: no Jacobian
            return -bench.log_joint({**params["loc"], **point}, data, k_model, size)[0]
        keys = jax.random.split(k_eps, len(shapes))
        u, log_q = {}, 0.0
        for k, name in zip(keys, shapes):
            loc, scale = params["loc"][name], jax.nn.softplus(params["raw"][name])
            u[name] = loc + scale * jax.random.normal(k, loc.shape)
            log_q = log_q + jnp.sum(stats.norm.logpdf(u[name], loc, scale))
        log_p, log_jac = bench.log_joint({**u, **point}, data, k_model, size)
        return log_q - log_p - log_jac

    return loss


def floor_init(bench: Bench, size: Size) -> dict[str, Any]:
    shapes = bench.floor_sites(size)
    raw = float(np.log(np.expm1(INIT_SCALE)))
    params = {
        "loc": {n: jnp.zeros(s) for n, s in shapes.items()},
        "raw": {n: jnp.full(s, raw) for n, s in shapes.items()},
    }
    if bench.floor_params is not None:  # trained as they are: no scale, no prior, no Jacobian
        params["point"] = bench.floor_params(size)
    return params


class Floor(Impl):
    def __init__(self, bench: Bench, size: Size, guide: str, data: Data):
        self.arrays, rebuild = split_static(data)
        loss = floor_loss(bench, size, guide)
        opt = optax.adam(bench.lr)

        def step(carry: Any, arrs: Any) -> tuple[Any, jax.Array]:
            params, opt_state, key, i = carry
            sub = jax.random.fold_in(key, i)  # compiled away where nothing draws (MAP without subsampling)
            value, grads = jax.value_and_grad(loss)(params, sub, rebuild(arrs))
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, key, i + 1), value

        self.step = step
        params = floor_init(bench, size)
        if guide == "delta":
            params = {k: v for k, v in params.items() if k != "raw"}
        carry = (params, opt.init(params), jax.random.PRNGKey(1), jnp.zeros((), jnp.int32))
        self.carry, _ = _block(jax.jit(step)(carry, self.arrays))
        self.loops: dict[int, Any] = {}

    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        step = self.step
        if steps not in self.loops:

            @jax.jit
            def loop(carry: Any, arrs: Any) -> Any:
                return jax.lax.scan(lambda c, _: step(c, arrs), carry, None, length=steps)

            _block(loop(self.carry, self.arrays))  # compile; the result is dropped
            self.loops[steps] = loop
        t = _now()
        _, losses = _block(self.loops[steps](self.carry, self.arrays))
        return (_now() - t) / steps, np.asarray(losses)


def build(impl: str, bench: Bench, size: Size, guide: str, data: Data) -> Impl:
    """Build (and take the first step of) one implementation."""
    if impl == "jg_fit":
        return JgFit(bench, size, guide, data, progress_bar=False)
    if impl == "jg_fit_bar":
        return JgFit(bench, size, guide, data, progress_bar=True)
    if impl == "jg_scan":
        return JgScan(bench, size, guide, data)
    if impl == "np_run":
        return NpRun(bench, size, guide, data, progress_bar=False)
    if impl == "np_run_bar":
        return NpRun(bench, size, guide, data, progress_bar=True)
    if impl == "np_update":
        return NpUpdate(bench, size, guide, data)
    if impl == "floor":
        return Floor(bench, size, guide, data)
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")
