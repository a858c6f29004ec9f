"""Dense Adam against row-sparse Adam on K local latents in a subsampled plate.

``python -m bench sparse [--quick] [--out FILE]``: for K = 10^4 ... 10^7 and a
batch of 1,000 rows, the per-step time of ``jaxguides.svi(...).step`` in a
jitted ``lax.scan`` with ``optax.adam`` and with ``jaxguides.sparse_adam``
(each in a fresh process), the bytes the parameter table costs a step (an
estimate: what each update must read and write), the peak RSS, and the fit
quality: the posterior means of both after the same number of steps from the
same key, for the sizes where dense Adam can afford those steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402

BATCH = 1000
LR = 0.05


def hierarchical(y, sigma, batch):
    """The hierarchical model of ``bench/models.py`` with its plate subsampled."""  # noqa: D401
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfNormal(5.0))
    with numpyro.plate("units", y.shape[0], subsample_size=batch) as idx:
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma[idx]), obs=y[idx])


def data(k: int) -> tuple[jax.Array, jax.Array]:
    """K units, each with one noisy observation of its own effect (well identified,
    so that the local latents do converge and their posterior means can be compared)."""
    r = np.random.RandomState(0)
    sigma = (0.5 + r.rand(k)).astype(np.float32)
    y = (4.0 + 3.0 * r.randn(k) + sigma * r.randn(k)).astype(np.float32)
    return jnp.asarray(y), jnp.asarray(sigma)


def bytes_per_step(k: int, opt: str) -> int:
    """What the (K,)-sized leaves cost a step: loc and raw_scale, each with two
    moments (and a step counter for sparse Adam), float32 / int32.

    Dense: read params, both moments and the gradient, write params and both
    moments, and write the (mostly zero) gradient first: 8 passes over 2 K-tables.
    Sparse: the same 8 passes over 2 B-row slices, plus the ``last`` counters
    read and written, plus gathering and scattering the indices.
    """
    if opt == "adam":
        return 2 * 8 * 4 * k
    return 2 * 10 * 4 * BATCH + 2 * 4 * BATCH


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import jaxguides as jg
    from bench.impls import loss_only

    k, opt_name = spec["K"], spec["opt"]
    y, sigma = jax.block_until_ready(data(k))
    guide = jg.AutoNormal(hierarchical)
    opt = optax.adam(LR) if opt_name == "adam" else jg.sparse_adam(LR)
    algo = jg.svi(hierarchical, guide, opt)
    state = jax.jit(algo.init, static_argnums=3)(jax.random.PRNGKey(spec.get("seed", 0)), y, sigma, BATCH)

    def runner(steps: int) -> Any:
        return jax.jit(
            lambda s, y, sigma: jax.lax.scan(
                lambda s, _: loss_only(algo.step(s, y, sigma, BATCH)), s, None, length=steps
            )
        )

    out: dict[str, Any] = {}
    timed = runner(spec["time_steps"])
    jax.block_until_ready(timed(state, y, sigma))
    times = []
    for _ in range(spec["windows"]):
        t = time.perf_counter()
        jax.block_until_ready(timed(state, y, sigma))
        times.append((time.perf_counter() - t) / spec["time_steps"])
    out["step_s"] = times
    if spec["quality_steps"]:
        final, losses = runner(spec["quality_steps"])(state, y, sigma)
        median = guide.median(final.params)
        out["mu"], out["tau"] = float(median["mu"]), float(median["tau"])
        out["theta"] = np.asarray(median["theta"]).tolist() if k <= 10**5 else None
        out["theta_head"] = np.asarray(median["theta"][:1000]).tolist()
        out["scale_mean"] = float(jnp.mean(final.params.scale["theta"]))
        out["loss"] = float(np.mean(np.asarray(losses)[-len(losses) // 10 :]))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "bench.sparse", "--worker", json.dumps(spec)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if res.returncode:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench sparse", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--quality-steps", type=int, default=3000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sizes = args.sizes or ([10**4, 10**5] if args.quick else [10**4, 10**5, 10**6, 10**7])
    rows = []
    for k in sizes:
        res = {}
        quality = args.quality_steps if k <= 10**6 and not (args.quick and k > 10**5) else 0
        runs = [("adam", 0), ("sparse_adam", 0)] + ([("adam", 1)] if quality else [])  # seed 1: the noise
        for opt, seed in runs:
            time_steps = 2000 if opt == "sparse_adam" else int(np.clip(2 * 10**7 // k, 5, 2000))
            windows = args.windows if seed == 0 else 1
            spec = {
                "K": k,
                "opt": opt,
                "seed": seed,
                "time_steps": time_steps if seed == 0 else 5,
                "windows": windows,
                "quality_steps": quality,
            }
            t = time.perf_counter()
            name = opt if seed == 0 else f"{opt}@seed{seed}"
            res[name] = run(spec, timeout=3600)
            status = res[name].get("error") or f"{np.median(res[name]['step_s']) * 1e6:,.1f} us/step"
            print(f"  K={k:>10,} {name:16s} {time.perf_counter() - t:6.1f} s {status}", file=sys.stderr, flush=True)
        rows.append((k, res))
    report = "\n\n".join(
        [
            f"Command: `OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -m bench sparse {' '.join(argv or [])}`",
            f"Batch {BATCH:,} rows; `jg.svi(...).step` in a jitted `lax.scan`; learning rate {LR}; load average "
            f"at end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}.",
            table(rows, args.quality_steps),
        ]
    )
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


def _t(s: float) -> str:
    return f"{s * 1e6:,.0f} µs" if s < 1e-3 else f"{s * 1e3:,.1f} ms"


def table(rows: list[tuple[int, dict[str, Any]]], quality_steps: int) -> str:
    lines = [
        "| K | dense step | sparse step | speed-up | dense bytes/step (est.) | dense GB/s | sparse bytes/step (est.) "
        "| peak RSS dense / sparse | posterior after "
        f"{quality_steps:,} steps: mu, tau dense / sparse | theta means, sparse vs dense: mean abs diff / posterior sd "
        "| the same for dense vs dense with another seed (the noise) |",
        "|" + "---|" * 11,
    ]
    for k, res in rows:
        d, s = res.get("adam", {}), res.get("sparse_adam", {})
        if "error" in d or "error" in s:
            lines.append(f"| {k:,} | {d.get('error', '')} | {s.get('error', '')} |" + " |" * 8)
            continue
        td, ts = float(np.median(d["step_s"])), float(np.median(s["step_s"]))
        quality, diff, noise = "—", "—", "—"

        def theta_diff(x: dict[str, Any], y: dict[str, Any]) -> str:
            a, b = (np.asarray(z["theta"] if z["theta"] is not None else z["theta_head"]) for z in (x, y))
            return f"{np.mean(np.abs(a - b)) / d['scale_mean']:.3f}" + (" (rows < 1,000)" if x["theta"] is None else "")

        if "mu" in d and "mu" in s:
            quality = f"{d['mu']:.3f}, {d['tau']:.3f} / {s['mu']:.3f}, {s['tau']:.3f}"
            diff = theta_diff(d, s)
            other = res.get("adam@seed1", {})
            if "mu" in other:
                noise = theta_diff(d, other)
        lines.append(
            f"| {k:,} | {_t(td)} | {_t(ts)} | {td / ts:,.1f}x | {bytes_per_step(k, 'adam') / 1e6:,.1f} MB "
            f"| {bytes_per_step(k, 'adam') / td / 1e9:.1f} | {bytes_per_step(k, 'sparse') / 1e3:,.0f} kB "
            f"| {d['peak_rss_mb']:,.0f} / {s['peak_rss_mb']:,.0f} MB | {quality} | {diff} | {noise} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
