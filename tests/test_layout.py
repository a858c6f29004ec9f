"""The tests mirror the package: each module of ``jaxguides/`` has its test file.

A module added without naming its tests here fails :func:`test_every_module_has_its_test_file`.
Several small modules of one concept share a file (the guides' two kinds of
params in ``test_guides.py``); the NumPyro equivalence of every model feature
is ``test_numpyro_equivalence.py``; helpers are under ``tests/helpers/`` and
the benchmark's tests under ``bench/tests/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS = {
    "_caches.py": "test_canonical.py",  # clear_caches: test_fit.py too
    "_errors.py": "test_errors.py",
    "elbo/loss.py": "test_elbo.py",
    "elbo/total.py": "test_total.py",
    "guides/base.py": "test_guides.py",
    "guides/delta.py": "test_guides.py",
    "guides/normal.py": "test_guides.py",
    "guides/guide_list.py": "test_guide_list.py",
    "guides/numpyro_guide.py": "test_numpyro_guide.py",
    "interop/arviz_data.py": "test_arviz.py",
    "interop/numpyro_params.py": "test_interop.py",
    "loop/args.py": "test_model_language.py",  # static_argnames and the concrete-args fallback
    "loop/checkpoint.py": "test_checkpoint.py",
    "loop/checkpoint_io.py": "test_checkpoint.py",
    "loop/chunks.py": "test_chunks.py",
    "loop/compile.py": "test_interrupt.py",  # Ctrl-C while XLA compiles beside the main thread
    "loop/dce.py": "test_dce.py",
    "loop/fit.py": "test_fit.py",
    "loop/host_loop.py": "test_host_loop.py",
    "loop/interrupt.py": "test_interrupt.py",
    "loop/pacing.py": "test_fit.py",  # chunks sized by time, one compilation for any length
    "loop/progress.py": "test_fit.py",  # the bar's phases and last line (and test_host_loop.py)
    "loop/run_identity.py": "test_checkpoint.py",  # a checkpoint of another run is refused
    "model/concrete.py": "test_model_language.py",
    "model/data_check.py": "test_data_check.py",
    "model/identity.py": "test_identity.py",
    "model/params.py": "test_model_params.py",
    "model/sites.py": "test_sites.py",
    "model/support_checks.py": "test_support_checks.py",
    "optim/canonical.py": "test_canonical.py",
    "optim/optimizers.py": "test_optimizers.py",
    "optim/sparse.py": "test_sparse.py",
    "optim/trained.py": "test_trained.py",
    "parallel/sharding.py": "test_sharding.py",
    "subsample/epoch.py": "test_epoch.py",
    "subsample/indices.py": "test_sampler.py",
    "subsample/sampler.py": "test_sampler.py",
    "svi/state.py": "test_fit.py",
    "svi/step.py": "test_fit.py",
}


def test_every_module_has_its_test_file():
    modules = {
        str(p.relative_to(ROOT / "jaxguides")) for p in (ROOT / "jaxguides").rglob("*.py") if p.name != "__init__.py"
    }
    assert modules == set(TESTS), f"not mapped: {sorted(modules - set(TESTS))}; gone: {sorted(set(TESTS) - modules)}"
    missing = {m: t for m, t in TESTS.items() if not (ROOT / "tests" / t).is_file()}
    assert not missing, missing


def test_init_only_exports():
    """``jaxguides/__init__.py`` and the folders' ``__init__`` hold imports, ``__all__``,
    ``__version__`` and docstrings: no logic."""
    for init in (ROOT / "jaxguides").rglob("__init__.py"):
        for node in ast.parse(init.read_text()).body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            )
            ok = ok or (
                isinstance(node, ast.Assign)
                and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__") for t in node.targets)
            )
            assert ok, f"{init.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}"
