"""Tracing a NumPyro model once into a static, hashable description of its sites.

``trace_model`` runs the model a single time under NumPyro's own handlers
(``seed``, ``substitute`` with the init strategy, ``trace``) and returns

* a :class:`ModelSites`: frozen dataclasses holding names, shapes, event dims,
  plate frames and the support's pytree structure -- everything static, so it
  can live in the treedef of a params pytree and key ``jax.jit`` caches;
* the initial unconstrained value of every latent site, repeated to full plate
  size the way NumPyro does it for subsampled plates;
* the array-valued leaves of each support (an ``interval``'s bounds), which are
  data, not static, and so travel inside params.

It works under ``jax.jit`` / ``jax.vmap`` (only shapes are read statically).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import PyTreeDef
from numpyro import handlers
from numpyro.contrib.control_flow.scan import scan_wrapper
from numpyro.distributions import constraints
from numpyro.distributions.transforms import IdentityTransform, IndependentTransform, Transform, biject_to
from numpyro.distributions.util import periodic_repeat
from numpyro.infer.initialization import init_to_feasible, init_to_uniform, init_to_value
from numpyro.primitives import Messenger

from jaxguides._errors import ModelTraceError, SiteError
from jaxguides.model.identity import Config, model_config, model_name
from jaxguides.model.params import ParamSite, describe_params

__all__ = [
    "LatentSite",
    "Traced",
    "ModelSites",
    "PlateFrame",
    "call_signature",
    "check_init_values",
    "check_scan_body",
    "model_name",
    "trace_model",
]


@dataclasses.dataclass(frozen=True)
class PlateFrame:
    """A ``numpyro.plate`` as seen while tracing.

    Attributes:
        name: plate name.
        size: full size of the plate.
        subsample_size: rows per call (``== size`` when not subsampled).
        dim: the batch dim (negative) the plate occupies, ``None`` if no latent
            or observed site was inside it.
    """

    name: str
    size: int
    subsample_size: int
    dim: int | None

    @property
    def subsampled(self) -> bool:
        return self.subsample_size != self.size


@dataclasses.dataclass(frozen=True)
class SupportSpec:
    """A NumPyro constraint split into its static structure and its leaves.

    NumPyro constraints are pytrees; their treedef is hashable. Python-scalar
    leaves (``greater_than(1.0)``) are kept here, static; array leaves (an
    interval with array bounds) are data and live in ``params.support``.
    """

    treedef: PyTreeDef
    static_leaves: tuple[tuple[int, float], ...]
    num_leaves: int

    @classmethod
    def split(cls, support: constraints.Constraint) -> tuple[SupportSpec, tuple[jax.Array, ...]]:
        leaves, treedef = jax.tree_util.tree_flatten(support)
        static, data = [], []
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, (bool, int, float)):
                static.append((i, leaf))
            else:
                data.append(jnp.asarray(leaf))
        return cls(treedef, tuple(static), len(leaves)), tuple(data)

    def build(self, data: tuple[jax.Array, ...] = ()) -> constraints.Constraint:
        """Rebuild the constraint from its array leaves."""
        static = dict(self.static_leaves)
        data_iter = iter(data)
        leaves = [static[i] if i in static else next(data_iter) for i in range(self.num_leaves)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


@dataclasses.dataclass(frozen=True)
class LatentSite:
    """A latent (unobserved, continuous) sample site.

    Attributes:
        name: site name.
        shape: full-size constrained shape (batch + event), plates at full size.
        event_dim: event dims of the model's distribution at this site.
        unconstrained_shape: full-size shape in unconstrained space.
        unconstrained_event_dim: event dims in unconstrained space; the guide
            reinterprets these as one event (``event_dim`` + the change in rank
            made by the bijection, as NumPyro's AutoNormal does).
        support: static part of the site's support.
        plates: the plates the site sits in, outermost first.
        dtype: dtype name of the site's value.
    """

    name: str
    shape: tuple[int, ...]
    event_dim: int
    unconstrained_shape: tuple[int, ...]
    unconstrained_event_dim: int
    support: SupportSpec
    plates: tuple[PlateFrame, ...]
    dtype: str

    def transform(self, support_data: tuple[jax.Array, ...] = ()) -> Transform:
        """The bijection from unconstrained space onto the support."""
        return biject_to(self.support.build(support_data))

    def plate_axis(self, frame: PlateFrame, unconstrained: bool = True) -> int:
        """Axis (negative) of ``frame`` in this site's (unconstrained) value."""
        assert frame.dim is not None
        event_dim = self.unconstrained_event_dim if unconstrained else self.event_dim
        return frame.dim - event_dim


@dataclasses.dataclass(frozen=True)
class ModelSites:
    """Static description of a model's sites, as traced by ``guide.init``.

    Attributes:
        model: the model's qualified name (used to refuse params of another model).
        latents: latent sites, in the order the model samples them.
        observed: names of observed sample sites (``numpyro.factor`` excluded).
        factors: names of ``numpyro.factor`` sites.
        deterministic: names of ``numpyro.deterministic`` sites.
        plates: every plate the model entered.
        config: the Python values the model callable carries (closure cells,
            partial arguments; see ``jaxguides/model/identity.py``), which tell apart
            models of one name. Last, with a default, so that params pickled
            before it existed load (as a plain function's ``()``).
        params: the model's own ``numpyro.param`` sites (``ParamSite``, see
            ``jaxguides/model/params.py``), trained with the guide.
        mutable: names of the model's ``numpyro.mutable`` sites (state carried
            from step to step, never differentiated).
    """

    model: str
    latents: tuple[LatentSite, ...]
    observed: tuple[str, ...]
    factors: tuple[str, ...]
    deterministic: tuple[str, ...]
    plates: tuple[PlateFrame, ...]
    config: Config = ()
    params: tuple[ParamSite, ...] = ()
    mutable: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.latents)

    @property
    def subsampled_plates(self) -> tuple[PlateFrame, ...]:
        return tuple(p for p in self.plates if p.subsampled)

    def __getitem__(self, name: str) -> LatentSite:
        for site in self.latents:
            if site.name == name:
                return site
        raise KeyError(name)


class _SiteGuard(Messenger):
    """Checks each latent site before the init strategy sees it, and its init
    value as soon as the strategy has given it.

    Records the last site reached (for errors raised by the model itself) and
    turns discrete or bijection-less supports, and init values of the wrong
    shape or outside the support, into a ``SiteError`` naming the site and the
    fix -- before a later site that uses the value can fail on it.
    """

    def __init__(self, fn: Callable[..., Any]):
        super().__init__(fn)
        self.last_site: str | None = None
        self.step_shapes: dict[str, tuple[int, ...]] = {}  # a scanned site: the shape its steps stack to

    def process_message(self, msg: dict[str, Any]) -> None:
        check_scan_body(msg, self._check_step)  # a scan's steps: this guard sees their sites stacked, after
        if msg.get("name") is not None and msg["type"] in ("sample", "deterministic", "plate"):
            self.last_site = msg["name"]
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        check_continuous(msg["name"], msg["fn"])

    def _check_step(self, name: str, fn: Any, stacked_shape: tuple[int, ...]) -> None:
        """A latent site of a scan step, before the init strategy sees it."""
        self.last_site = name
        check_continuous(name, fn)
        self.step_shapes[name] = stacked_shape

    def postprocess_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            stacked = self.step_shapes.get(msg["name"])
            if stacked is not None and tuple(jnp.shape(msg["value"])) != stacked:
                raise SiteError(
                    msg["name"],
                    f"latent site '{msg['name']}' is in a scan inside another scan's body (its "
                    f"steps stack to {tuple(jnp.shape(msg['value']))}, not {stacked}); nested scans "
                    "are not supported. Write the inner loop as a vectorised site or a plate.",
                )
            _check_init_value(msg["name"], msg["fn"], msg["value"])


def check_scan_body(msg: dict[str, Any], check: Callable[[str, Any, tuple[int, ...]], None]) -> None:
    """Have ``check(name, fn, stacked_shape)`` see each latent site of a ``scan`` body.

    ``numpyro.contrib.control_flow.scan`` traces its body under ``handlers.block``:
    handlers outside it see the body's sites only after all steps ran, stacked
    (``fn`` and value of shape ``(T, ...)``), and what the steps substitute
    fails there first (a substituted series of another length than ``T``
    raises NumPyro's own error, or is padded with prior draws). Only the
    substitutions in scan's ``substitute_stack`` reach each step, so ``check``
    goes there, first (before any value is substituted), and
    sees the step's site with the shape it stacks to: ``(T,) + step shape``.
    ``msg`` is any message; only a scan's ``control_flow`` message is acted on.
    """
    if msg["type"] != "control_flow" or msg["fn"] is not scan_wrapper:
        return
    _, _, xs, length, _ = msg["args"]
    if length is None:
        length = jnp.shape(jax.tree.leaves(xs)[0])[0]

    def check_step(site: dict[str, Any]) -> None:
        if site["type"] == "sample" and not site["is_observed"]:
            _refuse_scaled_step(site)
            shape = (int(length),) + tuple(site["kwargs"].get("sample_shape", ())) + tuple(site["fn"].shape())
            check(site["name"], site["fn"], shape)

    msg["kwargs"]["substitute_stack"].insert(0, ("substitute", check_step))  # innermost in each step


def _refuse_scaled_step(site: dict[str, Any]) -> None:
    """A latent of a scan step must not be scaled: a subsampled plate in the body
    (scale ``size / subsample_size``) draws its own rows each step, which the
    guide's params cannot follow (only sample sites of a step reach this check)."""
    scale = site.get("scale")
    if scale is None or np.size(scale) != 1 or isinstance(scale, jax.core.Tracer):
        return
    if float(np.asarray(scale)) != 1.0:
        name = site["name"]
        raise SiteError(
            name,
            f"latent site '{name}' of a scan body is scaled by {float(np.asarray(scale)):g}: a "
            "subsampled plate inside a scan body draws its own rows each step, which a guide's "
            "params cannot follow (and a handlers.scale there is not supported either). Put the "
            "subsampled plate outside the scan, or drop its subsample_size.",
        )


def check_continuous(name: str, fn: Any) -> None:
    """Raise ``SiteError`` unless ``fn``'s support has a bijection to real space."""
    support = fn.support
    if support.is_discrete:
        raise SiteError(
            name,
            f"latent site '{name}' is discrete ({type(fn).__name__}, support "
            f"{support}); AutoNormal and AutoDelta need continuous latents. "
            "Observe it (obs=...), marginalise it out by hand, or use a "
            "continuous relaxation (e.g. RelaxedBernoulli).",
        )
    try:
        biject_to(support)
    except NotImplementedError:
        raise SiteError(
            name,
            f"latent site '{name}' has support {support} with no bijection to "
            "real space, so it cannot be optimised in unconstrained space. "
            "Reparameterise it (e.g. ProjectedNormal with "
            "numpyro.infer.reparam.ProjectedNormalReparam for a sphere).",
        ) from None


def _full_shape(shape: tuple[int, ...], frames: list[Any], event_dim: int, full: dict[str, int]) -> tuple[int, ...]:
    out = list(shape)
    for frame in frames:
        axis = frame.dim - event_dim
        if -len(out) <= axis < 0 and out[axis] == frame.size:
            out[axis] = full[frame.name]
    return tuple(out)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_init_value(name: str, fn: Any, value: Any) -> None:
    """Raise ``SiteError`` if an init value has the wrong shape, lies outside
    the support of ``fn`` or on its edge (checked where the value is concrete)."""
    expected = tuple(fn.shape())
    if tuple(jnp.shape(value)) != expected:
        raise SiteError(
            name,
            f"init value of site '{name}' has shape {tuple(jnp.shape(value))} but "
            f"the site has shape {expected}; give init_to_value a value of that shape.",
        )
    # Eager where the value and the bounds are concrete, even while jit traces init. A value
    # as a jax array meets bounds traced under jit (array model args) without a numpy function;
    # the answer is then traced too, and left to check_init_values, run outside jit.
    if not _is_concrete(value):  # a drawn value (traced under jit): the answer would be traced
        return  # too, and evaluating the support's constant parts eagerly compiles op by op
    with jax.ensure_compile_time_eval():
        inside = fn.support(jnp.asarray(value))
        unconstrained = biject_to(fn.support).inv(value)
    if _is_concrete(inside) and not bool(np.all(np.asarray(inside))):
        raise SiteError(
            name,
            f"init value of site '{name}' lies outside its support {fn.support}; "
            "give init_to_value a value inside the support, or use another init "
            "strategy (e.g. init_to_feasible).",
        )
    if _is_concrete(unconstrained) and not bool(np.all(np.isfinite(np.asarray(unconstrained)))):
        raise SiteError(
            name,
            f"init value of site '{name}' is on the edge of its support {fn.support} (its "
            "unconstrained value is not finite); give init_to_value a value strictly inside "
            "the support, or use another init strategy (e.g. init_to_feasible).",
        )


class Traced(NamedTuple):
    """What ``trace_model`` reads off one run of the model.

    Attributes:
        sites: the static description.
        locs: each latent site's initial value in unconstrained space at full
            plate size (shape ``site.unconstrained_shape``).
        support: each latent's and model param's support array leaves.
        model_params: each ``numpyro.param`` site's initial value, unconstrained.
        model_state: each ``numpyro.mutable`` site's initial value.
    """

    sites: ModelSites
    locs: dict[str, jax.Array]
    support: dict[str, tuple[jax.Array, ...]]
    model_params: dict[str, Any]
    model_state: dict[str, Any]


def trace_model(
    model: Callable[..., Any],
    rng_key: jax.Array,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    init_loc_fn: Callable[..., Any],
) -> Traced:
    """Run ``model`` once and describe its sites (see :class:`Traced`).

    Raises:
        SiteError: a discrete or bijection-less latent, or a bad init value.
        ModelTraceError: the model itself raised; names the last site reached.
    """
    at_zero: set[str] = set()
    trace = _run_checked(model, rng_key, args, kwargs, init_loc_fn, at_zero)
    sites, locs, support = _describe(model, trace, at_zero)
    params, values, param_support, state = describe_params(trace, SupportSpec.split)
    sites = dataclasses.replace(sites, params=params, mutable=tuple(state))
    return Traced(sites, locs, {**support, **param_support}, values, state)


def check_init_values(
    model: Callable[..., Any],
    rng_key: jax.Array,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    init_loc_fn: Callable[..., Any],
) -> None:
    """Check ``init_to_value`` values against supports computed from concrete args.

    Under ``jax.jit`` (``fit`` jits ``init``) a support whose bounds are model
    args is traced, so ``trace_model`` cannot tell whether a given value lies
    inside it. Run eagerly, before compiling, this can: it runs the model once
    with the same checks. Other init strategies draw inside the support, so for
    them it returns at once without running the model.

    Raises:
        SiteError, ModelTraceError: as ``trace_model``.
    """
    if isinstance(init_loc_fn, functools.partial) and init_loc_fn.func is init_to_value:
        if init_loc_fn.keywords.get("values"):
            _run_checked(model, rng_key, args, kwargs, init_loc_fn, set())


def _run_checked(
    model: Callable[..., Any],
    rng_key: jax.Array,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    init_loc_fn: Callable[..., Any],
    at_zero: set[str],
) -> dict[str, dict[str, Any]]:
    """The model's trace under ``init_loc_fn``, each latent site checked as it is reached
    (``at_zero`` collects the sites that start at 0 in unconstrained space)."""
    _check_signature(model, args, kwargs)
    guard = _SiteGuard(handlers.seed(model, rng_key))
    tracer = handlers.trace(handlers.substitute(guard, substitute_fn=_without_draws(init_loc_fn, at_zero)))
    try:
        return tracer.get_trace(*args, **kwargs)
    except (SiteError, ModelTraceError):
        raise
    except Exception as err:  # the model's own error: say where it happened
        where = f"at or just after site '{guard.last_site}'" if guard.last_site else "before its first site"
        raise ModelTraceError(
            guard.last_site,
            f"the model raised {type(err).__name__} while jaxguides traced it "
            f"({where}): {err}. Check that the model runs with these args, e.g. "
            "numpyro.handlers.seed(model, 0)(*args, **kwargs).",
        ) from err


def _without_draws(init_loc_fn: Callable[..., Any], at_zero: set[str]) -> Callable[..., Any]:
    """``init_loc_fn``, except that ``init_to_feasible`` (``init_to_uniform`` with
    radius 0) gives its value without drawing: ``Uniform(-0, 0)`` is 0 whatever
    the key, so the site starts at ``biject_to(support)(0)``, the value NumPyro
    gives, and a compiled ``init`` needs no random-number code at all. Such a
    site's name goes to ``at_zero`` and ``_describe`` starts it at 0 in
    unconstrained space: no round trip through the bijection's inverse (which,
    for an LKJ or simplex site, made a compiled ``init`` slow to build;
    NumPyro's round trip gives 0 up to rounding). Inside a ``scan`` body this
    runs once per step, on the step's shape and under ``lax.scan``'s trace: so
    only the name is kept, and the 0 of the stacked shape comes from the outer trace."""
    radius = 0 if init_loc_fn is init_to_feasible else None
    if isinstance(init_loc_fn, functools.partial) and init_loc_fn.func is init_to_uniform and not init_loc_fn.args:
        radius = init_loc_fn.keywords.get("radius", 2)
    if radius != 0:
        return init_loc_fn

    def start_at_zero(site: dict[str, Any]) -> Any:
        if site["type"] != "sample" or site["is_observed"] or site["value"] is not None:
            return init_loc_fn(site)
        if site["fn"].support.is_discrete:
            return init_loc_fn(site)
        at_zero.add(site["name"])
        return biject_to(site["fn"].support)(_unconstrained_zero(site))

    return start_at_zero


def _unconstrained_zero(site: dict[str, Any]) -> jax.Array:
    """0 in the unconstrained space of a sample site (its ``sample_shape`` included)."""
    shape = biject_to(site["fn"].support).inverse_shape(site["fn"].shape())
    return jnp.zeros(site["kwargs"].get("sample_shape", ()) + shape)


def call_signature(model: Callable[..., Any]) -> inspect.Signature | None:
    """The signature a call of ``model`` binds against, or ``None`` if unknown.

    ``inspect.signature`` follows ``__wrapped__``, so for a wrapper that binds
    arguments (``functools.update_wrapper(functools.partial(f, batch=B), f)``,
    any ``functools.wraps`` decorator that fills some in) it gives ``f``'s
    signature and would refuse calls that run. So only NumPyro handlers, which
    pass their arguments through unchanged, are looked through; any other
    wrapper's own signature counts (``(*args, **kwargs)``: the model itself
    then raises for a wrong call).
    """
    while isinstance(model, Messenger) and model.fn is not None:
        model = model.fn
    try:
        return inspect.signature(model, follow_wrapped=False)
    except (TypeError, ValueError):
        return None


def _check_signature(model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    sig = call_signature(model)
    if sig is None:
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"the model {model_name(model)}{sig} cannot be called with these args: {err}") from None


def _describe(
    model: Callable[..., Any], trace: dict[str, dict[str, Any]], at_zero: set[str]
) -> tuple[ModelSites, dict[str, jax.Array], dict[str, tuple[jax.Array, ...]]]:
    full_sizes = {n: s["args"][0] for n, s in trace.items() if s["type"] == "plate"}
    plate_dims: dict[str, int] = {}
    for site in trace.values():
        for frame in site.get("cond_indep_stack", ()):
            plate_dims.setdefault(frame.name, frame.dim)
    plates = {
        n: PlateFrame(n, int(s["args"][0]), int(jnp.shape(s["value"])[0]), plate_dims.get(n))
        for n, s in trace.items()
        if s["type"] == "plate"
    }
    # a plate inside a `scan` body is not in the trace (scan passes on its sample sites only): its
    # sites' frames give its size, taken as full (a subsample drawn per step has no full size to index)
    for site in trace.values():
        for frame in site.get("cond_indep_stack", ()):
            if frame.name not in plates:
                plates[frame.name] = PlateFrame(frame.name, int(frame.size), int(frame.size), frame.dim)
                full_sizes[frame.name] = frame.size
    latents: list[LatentSite] = []
    observed: list[str] = []
    factors: list[str] = []
    deterministic: list[str] = []
    init_locs: dict[str, jax.Array] = {}
    support_data: dict[str, tuple[jax.Array, ...]] = {}
    for name, site in trace.items():
        if site["type"] == "deterministic":
            deterministic.append(name)
            continue
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            (factors if type(site["fn"]).__name__ == "Unit" else observed).append(name)
            continue
        fn, value = site["fn"], site["value"]  # checked by _SiteGuard when the site was reached
        # a scanned site's fn and value are stacked over the scan's steps, (T, ...)
        unconstrained = _unconstrained_zero(site) if name in at_zero else biject_to(fn.support).inv(value)
        event_dim = fn.event_dim
        u_event_dim = event_dim + jnp.ndim(unconstrained) - jnp.ndim(value)
        frames = list(site["cond_indep_stack"])
        _check_bounds_in_subsampled_plates(name, fn, frames, full_sizes)
        for frame in frames:
            if full_sizes[frame.name] != frame.size:
                unconstrained = periodic_repeat(unconstrained, full_sizes[frame.name], frame.dim - u_event_dim)
        spec, data = SupportSpec.split(fn.support)
        latents.append(
            LatentSite(
                name=name,
                shape=_full_shape(tuple(jnp.shape(value)), frames, event_dim, full_sizes),
                event_dim=int(event_dim),
                unconstrained_shape=tuple(jnp.shape(unconstrained)),
                unconstrained_event_dim=int(u_event_dim),
                support=spec,
                plates=tuple(plates[f.name] for f in sorted(frames, key=lambda f: f.dim)),
                dtype=jnp.result_type(value).name,
            )
        )
        init_locs[name] = unconstrained
        support_data[name] = data
    if not latents:
        raise ValueError(
            f"the model {model_name(model)} has no latent sample sites, so there is "
            "nothing for a guide to fit; every sample site is observed or a factor."
        )
    sites = ModelSites(
        model=model_name(model),
        latents=tuple(latents),
        observed=tuple(observed),
        factors=tuple(factors),
        deterministic=tuple(deterministic),
        plates=tuple(plates.values()),
        config=model_config(model),
    )
    return sites, init_locs, support_data


def _check_bounds_in_subsampled_plates(name: str, fn: Any, frames: list[Any], full: dict[str, int]) -> None:
    """Refuse array support bounds that run along a subsampled plate.

    ``init`` sees one subsample's rows of them, and params hold every row (as
    in NumPyro, which fails on them later); bounds of size 1 along the plate
    are the same for every row and fine.
    """
    for frame in frames:
        if full[frame.name] == frame.size:
            continue
        axis = frame.dim - fn.event_dim
        for bound in jax.tree_util.tree_leaves(fn.support):
            shape = tuple(jnp.shape(bound))
            if -len(shape) <= axis and shape[axis] != 1:
                raise SiteError(
                    name,
                    f"latent site '{name}' is in the subsampled plate '{frame.name}' (size "
                    f"{full[frame.name]}, subsample {frame.size}) and its support {fn.support} has "
                    f"bounds of shape {shape} along that plate, which a guide cannot keep for every "
                    "row from one subsample. Use bounds that are the same for every row (scalars, "
                    "or size 1 along the plate), or sample an unbounded or standard site and map "
                    "it into its bounds in the model (e.g. low + (high - low) * a Uniform(0, 1) "
                    "site), or do not subsample this plate.",
                )


def is_identity(transform: Transform) -> bool:
    """Whether ``transform`` is the identity (possibly wrapped as independent),
    as for ``real``, ``real_vector`` and ``real_matrix`` supports."""
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, IdentityTransform)
