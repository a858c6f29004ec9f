"""``python -m bench program``: a hash of the XLA program ``fit`` compiles for its chunk, per model and guide.

Two commits that print the same hashes run the same compiled step: what a
behaviour-preserving change (a restructuring) must show, beside the timings,
which this 2-core host blurs. The hash is over the optimized HLO text with
its metadata, source locations and instruction names left out. It runs the
chunk of the package on ``sys.path`` (``PYTHONPATH=<checkout> python -m bench
program`` for another checkout).
"""

from __future__ import annotations

import argparse
import hashlib
import re

import jax
import numpy as np
import optax

import jaxguides as jg
from bench.models import BENCHES

_MODELS = ("normal", "hier", "logreg_sub", "constrained")


def normalized(hlo: str) -> str:
    """``hlo`` without what names or locations change: metadata, the file and stack-frame tables,
    and instruction names (``%update_step.20`` -> ``%20``)."""
    hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    hlo = re.sub(r"^HloModule [^\n]*\n", "", hlo)
    out, skip = [], False
    for line in hlo.split("\n"):
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            skip = True
            continue
        if skip and (re.match(r"^\d+ ", line) or line == ""):
            continue
        skip = False
        line = re.sub(r",? ?stack_frame_id=\d+", "", line)
        out.append(re.sub(r"%[A-Za-z_][\w-]*?\.(\d+)", r"%\1", line))
    return "\n".join(out)


def chunk_program(model: str, guide_cls: type, length: int = 256) -> str:
    """The optimized HLO of ``fit``'s chunk of ``length`` steps for a bench model (its first size)."""
    from jaxguides.loop.args import partition
    from jaxguides.loop.chunks import run_chunk
    from jaxguides.svi.step import init_state

    bench = BENCHES[model]
    args = tuple(bench.data(bench.sizes[0]))
    guide, optimizer = guide_cls(bench.model), optax.adam(bench.lr)
    loss_fn = jg.elbo_loss(bench.model, guide)
    dynamic, static = partition(args, {})
    state = jax.eval_shape(lambda k: init_state(guide, optimizer, k, args, {}, loss_fn), jax.random.PRNGKey(0))
    chunk = dict(loss_fn=loss_fn, optimizer=optimizer, static=static, length=length, skip=False, layout=None)
    return run_chunk.lower(state, np.int32(length), dynamic, **chunk).compile().as_text()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench program", description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(_MODELS), choices=list(BENCHES))
    opts = parser.parse_args(argv)
    for model in opts.models:
        for guide_cls in (jg.AutoNormal, jg.AutoDelta):
            text = normalized(chunk_program(model, guide_cls))
            print(f"{model:12s} {guide_cls.__name__:10s} {hashlib.sha256(text.encode()).hexdigest()[:16]}")
