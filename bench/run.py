"""The side-by-side benchmark: every model through every implementation, one table.

Each measurement runs in a fresh subprocess (``bench/worker.py``), so no
implementation profits from another's compile cache; the implementations of
a configuration are interleaved within each repetition (in a rotated order)
so that machine drift spreads over all of them. Reported: medians over the
repetitions of time to first step and peak RSS, and for the steady-state time
per step the fastest repetition's median over its timed runs: on this host a
whole process now and then runs every step several times slower (every
implementation alike: the hierarchical K=10^5 MAP step at ~830 µs instead of
160-230 µs in 2 of 10 fresh processes), and such a process must not move the
number.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench.impls import IMPLS
from bench.models import BENCHES, size_label

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
NUMPYRO_OF = {"jg_fit": "np_run", "jg_fit_bar": "np_run_bar", "jg_scan": "np_update"}


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def configs(args: argparse.Namespace) -> list[tuple[str, dict[str, int], str]]:
    out = []
    for name in args.models:
        bench = BENCHES[name]
        for size in bench.quick_sizes if args.quick else bench.sizes:
            for guide in args.guides:
                out.append((name, size, guide))
    return out


def final_loss(losses: list[float]) -> tuple[float, float]:
    """Mean and standard deviation of the last 10% of a run's losses."""
    x = np.asarray(losses, np.float64)
    x = x[-max(len(x) // 10, 1) :]
    return float(np.mean(x)), float(np.std(x))


def steady(runs: list[dict[str, Any]], key: str) -> float:
    """The fastest process's median over its timed runs (see the module docstring)."""
    return float(min(np.median(r[key]) for r in runs))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name, size, guide in configs(args):
        bench = BENCHES[name]
        steps = bench.steps(size)
        results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in args.impls}
        for rep in range(args.reps):
            order = args.impls[rep % len(args.impls) :] + args.impls[: rep % len(args.impls)]
            for impl in order:
                spec = {
                    "impl": impl,
                    "bench": name,
                    "size": size,
                    "guide": guide,
                    "steps": steps,
                    "windows": args.windows,
                }
                t = time.perf_counter()
                res = run_worker(spec, args.timeout)
                status = res.get("error") or f"{np.median(res['step_s']) * 1e6:.1f} us/step"
                print(
                    f"  [{rep + 1}/{args.reps}] {name:11s} {size_label(size):18s} {guide:6s} {impl:10s} "
                    f"{time.perf_counter() - t:6.1f} s  {status}",
                    file=sys.stderr,
                    flush=True,
                )
                results[impl].append(res)
        for impl, runs in results.items():
            ok = [r for r in runs if "error" not in r]
            row = {"model": name, "size": size_label(size), "guide": guide, "impl": impl, "steps": steps}
            if not ok:
                row["error"] = runs[0]["error"] if runs else "not run"
            else:
                row["first_s"] = float(np.median([r["first_step_s"] for r in ok]))
                row["step_s"] = steady(ok, "step_s")
                row["step_cpu_s"] = steady(ok, "step_cpu_s")
                row["rss_mb"] = float(np.median([r["peak_rss_mb"] for r in ok]))
                row["loss"], row["loss_sd"] = final_loss(ok[-1]["losses"])
            rows.append(row)
    return rows


# ---- the table ---------------------------------------------------------------------------------
def _fmt_time(s: float) -> str:
    return f"{s * 1e6:,.1f} µs" if s < 1e-3 else f"{s * 1e3:,.2f} ms"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def quality_flags(rows: list[dict[str, Any]]) -> None:
    """Flag a final loss farther from the floor's than the noise of the two allows."""
    by_cfg: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_cfg.setdefault((r["model"], r["size"], r["guide"]), {})[r["impl"]] = r
    for (model, _, guide), group in by_cfg.items():
        ref = group.get("floor") or group.get("np_update")
        for r in group.values():
            if "loss" not in r or ref is None or "loss" not in ref:
                continue
            if guide == "delta" and BENCHES[model].map_diverges:
                r["loss_ok"] = "n/a: MAP diverges"
                continue
            tol = 2.0 * max(r["loss_sd"], ref["loss_sd"]) + 0.005 * abs(ref["loss"]) + 0.05
            r["loss_ok"] = abs(r["loss"] - ref["loss"]) <= tol


def table(rows: list[dict[str, Any]]) -> str:
    quality_flags(rows)
    index = {(r["model"], r["size"], r["guide"], r["impl"]): r for r in rows}
    head = (
        "| model | size | guide | implementation | first step | step | step (CPU) | peak RSS | final loss "
        "| step / floor | step / NumPyro | CPU step / floor | first / floor | first / NumPyro |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        key = (r["model"], r["size"], r["guide"])
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['size']} | {r['guide']} | {r['impl']} | error: {r['error']} |" + " |" * 9
            )
            continue
        floor = index.get((*key, "floor"), {})
        numpyro = index.get((*key, NUMPYRO_OF.get(r["impl"], "")), {})
        flag = r.get("loss_ok", True)
        note = "" if flag is True else (" **MISMATCH**" if flag is False else f" ({flag})")
        loss = f"{r['loss']:,.2f} ± {r['loss_sd']:,.2f}{note}"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['guide']} | {r['impl']} | {r['first_s']:.2f} s "
            f"| {_fmt_time(r['step_s'])} | {_fmt_time(r['step_cpu_s'])} | {r['rss_mb']:,.0f} MB | {loss} "
            f"| {_ratio(r['step_s'], floor.get('step_s'))} | {_ratio(r['step_s'], numpyro.get('step_s'))} "
            f"| {_ratio(r['step_cpu_s'], floor.get('step_cpu_s'))} "
            f"| {_ratio(r['first_s'], floor.get('first_s'))} | {_ratio(r['first_s'], numpyro.get('first_s'))} |"
        )
    return "\n".join(lines)


def headline(rows: list[dict[str, Any]]) -> str:
    """The issue's targets, checked against this table."""
    index = {(r["model"], r["size"], r["guide"], r["impl"]): r for r in rows if "error" not in r}
    cfgs = list(dict.fromkeys(k[:3] for k in index))  # in the order measured
    out = [
        "| model | size | guide | jg_scan step / floor (CPU) | jg_fit step / floor (CPU) | jg_fit first / floor "
        "| jg_fit first / np_run first | fit bar / fit | np_run_bar step / jg_fit_bar step |",
        "|" + "---|" * 9,
    ]
    for k in cfgs:

        def get(impl: str, field: str) -> float | None:
            return index.get((*k, impl), {}).get(field)

        out.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {_ratio(get('jg_scan', 'step_s'), get('floor', 'step_s'))} "
            f"({_ratio(get('jg_scan', 'step_cpu_s'), get('floor', 'step_cpu_s'))}) "
            f"| {_ratio(get('jg_fit', 'step_s'), get('floor', 'step_s'))} "
            f"({_ratio(get('jg_fit', 'step_cpu_s'), get('floor', 'step_cpu_s'))}) "
            f"| {_ratio(get('jg_fit', 'first_s'), get('floor', 'first_s'))} "
            f"| {_ratio(get('jg_fit', 'first_s'), get('np_run', 'first_s'))} "
            f"| {_ratio(get('jg_fit_bar', 'step_s'), get('jg_fit', 'step_s'))} "
            f"| {_ratio(get('np_run_bar', 'step_s'), get('jg_fit_bar', 'step_s'))} |"
        )
    return "\n".join(out)


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    import jax
    import numpyro

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{' / '.join(f'{x:.1f}' for x in load)}; python {platform.python_version()}, jax {jax.__version__}, "
        f"numpyro {numpyro.__version__}, backend {jax.default_backend()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs, 1 repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (fresh processes) per implementation")
    parser.add_argument("--windows", type=int, default=None, help="timed steady-state runs per process")
    parser.add_argument("--models", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--guides", nargs="+", default=["normal", "delta"], choices=["normal", "delta"])
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement process")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.windows = args.windows or (2 if args.quick else 3)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now().isoformat(timespec="seconds")
    before = machine()
    rows = measure(args)
    report = "\n\n".join(
        [
            f"Command: `OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 {command}`",
            f"Started {started}. Machine at start: {before}. At end: {machine()}.",
            "### Targets\n\n" + headline(rows),
            "### All measurements\n\n" + table(rows),
        ]
    )
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
