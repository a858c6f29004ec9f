"""How close the hierarchical model's step comes to the memory-bandwidth roofline.

``python -m bench roofline [--K 100000000] [--guides delta normal] [--peak-gbs 4800]``

For the hierarchical model of ``bench/models.py`` at K local latents (one
process; the default K = 10^8 is the issue's GPU size, use ``--K 10000000``
on a CPU), each implementation's steady-state step time (``jg_fit``, ``jg_scan``,
the hand-written ``floor``: ``bench/impls.py``), and two counts of the bytes
a step moves:

* **minimum**: what any implementation must move, every element of its
  params and optimizer state read and written once and every data array read
  once (its own state: the same sizes for jaxguides and the floor);
* **XLA**: ``bytes accessed`` in XLA's cost analysis of one compiled step
  (every kernel's operands and outputs, intermediates written out included).

The roofline fraction is ``bytes / step time / peak``: with ``--peak-gbs``
(an H200's HBM: 4,800 GB/s), else the bandwidth of a measured streaming
kernel (``x = a * x + b`` in place over 256 MB) on the default device, which on
a CPU is the honest peak to compare with. Medians over ``--runs`` timed runs of
``--steps`` steps.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import impls  # noqa: E402
from bench.models import HIER  # noqa: E402
from bench.run import _fmt_time, machine  # noqa: E402

IMPLEMENTATIONS = ("floor", "jg_scan", "jg_fit")
STREAM_BYTES = 256 * 2**20


def stream_gbs(repeats: int = 5, passes: int = 10) -> float:
    """Read-plus-write bandwidth of ``x = a * x + b`` over ``STREAM_BYTES`` of
    float32 on the default device, in GB/s (the best of ``repeats``). The
    passes run in one compiled loop that updates ``x`` in place, as a training
    loop's state is, so no time goes to allocating (and first touching) a new
    output buffer."""
    x = jnp.ones(STREAM_BYTES // 4, jnp.float32)
    axpb = jax.jit(lambda x: jax.lax.fori_loop(0, passes, lambda i, x: 1.0001 * x + 1e-4, x), donate_argnums=0)
    x = jax.block_until_ready(axpb(x))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        x = jax.block_until_ready(axpb(x))
        best = min(best, time.perf_counter() - t)
    return 2 * STREAM_BYTES * passes / best / 1e9


def nbytes(tree: Any) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def minimum_bytes(state: Any, arrays: Any) -> int:
    """Every state element read and written once, every data element read once."""
    return 2 * nbytes(state) + nbytes(arrays)


def xla_bytes(step: Any, *args: Any) -> float:
    """``bytes accessed`` of one compiled step, by XLA's cost analysis."""
    cost = jax.jit(step).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("bytes accessed", np.nan))


def one_step(impl: Any) -> tuple[Any, tuple[Any, ...], Any]:
    """A single step of a built implementation as ``(fn, args, state)``."""
    if isinstance(impl, impls.Floor):
        return impl.step, (impl.carry, impl.arrays), impl.carry[:2]  # params and Adam state
    if not isinstance(impl, impls.JgScan):
        raise TypeError(f"no single step for {type(impl).__name__}")
    algo, rebuild, state = impl.algo, impl.rebuild, impl.state
    return (
        (lambda s, arrs: impls.loss_only(algo.step(s, *rebuild(arrs)))),
        (state, impl.arrays),
        (state.params, state.opt_state),
    )


def measure(k: int, guide: str, steps: int, runs: int) -> list[dict[str, Any]]:
    size = {"K": k}
    data = jax.block_until_ready(HIER.data(size))
    built: dict[str, Any] = {}
    for name in IMPLEMENTATIONS:
        built[name] = impls.build(name, HIER, size, guide, data)
        built[name].run(steps)  # compile this length
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(runs):  # interleaved, so drift spreads over all
        for name, impl in built.items():
            times[name].append(float(impl.run(steps)[0][0]))
    counts = {}  # fit runs jg_scan's step in its own loop: the same bytes
    for name in ("floor", "jg_scan"):
        fn, args, state = one_step(built[name])
        counts[name] = {"min_bytes": minimum_bytes(state, built[name].arrays), "xla_bytes": xla_bytes(fn, *args)}
    counts["jg_fit"] = counts["jg_scan"]
    return [
        {"K": k, "guide": guide, "impl": name, "step_s": float(np.median(times[name])), **counts[name]}
        for name in IMPLEMENTATIONS
    ]


def table(rows: list[dict[str, Any]], peak: float, peak_label: str) -> str:
    out = [
        "| K | guide | implementation | step | minimum bytes / step | XLA bytes / step "
        "| GB/s (minimum) | roofline fraction (minimum) | roofline fraction (XLA bytes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["step_s"]
        out.append(
            f"| {r['K']:,} | {r['guide']} | {r['impl']} | {_fmt_time(t)} | {r['min_bytes'] / 1e6:,.1f} MB "
            f"| {r['xla_bytes'] / 1e6:,.1f} MB | {r['min_bytes'] / t / 1e9:,.1f} "
            f"| {r['min_bytes'] / t / 1e9 / peak:.0%} | {r['xla_bytes'] / t / 1e9 / peak:.0%} |"
        )
    return "\n".join(out) + f"\n\nPeak: {peak:,.0f} GB/s ({peak_label}).\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench roofline", description=__doc__.split("\n\n")[0])
    p.add_argument("--K", type=int, default=100_000_000, help="local latents (default 10^8: the GPU size)")
    p.add_argument("--guides", nargs="+", choices=("delta", "normal"), default=["delta", "normal"])
    p.add_argument("--steps", type=int, default=20, help="steps per timed run")
    p.add_argument("--runs", type=int, default=5, help="timed runs per implementation")
    p.add_argument("--peak-gbs", type=float, default=None, help="the device's peak bandwidth (default: measured)")
    p.add_argument("--out", default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    measured = stream_gbs()
    peak, label = (
        (args.peak_gbs, f"given; a measured stream reaches {measured:,.0f} GB/s")
        if args.peak_gbs
        else (measured, "measured: a streaming kernel on this device")
    )
    rows = []
    for guide in args.guides:
        rows += measure(args.K, guide, args.steps, args.runs)
        print(f"  K={args.K:,} {guide}: done", file=sys.stderr, flush=True)
    head = (
        f"Command: `python -m bench roofline {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"Started {datetime.datetime.now().isoformat(timespec='seconds')}: {machine()}; "
        f"device {getattr(device, 'device_kind', device.platform)}.\n\n"
    )
    report = head + table(rows, peak, label)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
