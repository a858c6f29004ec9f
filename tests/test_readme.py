"""The README's printed numbers: its 15-line example and the quickstart's output.

Both are checked against what the code prints now, and against the exact
posterior of the model (a grid over ``(loc, log scale)``), so that a stale
number in the README or a wrong fit fails here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LINE = re.compile(r"^\s*(\w+): median ([\d.]+)  90% interval \[([\d.]+), ([\d.]+)\]$")


def readme_block(after: str, lang: str) -> str:
    """The first ``lang`` code block after the line ``after``."""
    rest = README[README.index(after) :]
    start = rest.index(f"```{lang}\n") + len(lang) + 4
    return rest[start : rest.index("```", start)]


def parse_quickstart(text: str) -> dict[str, tuple[float, float, float]]:
    """``{site: (median, 5%, 95%)}`` from the quickstart's printed lines."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out[m.group(1)] = tuple(float(g) for g in m.groups()[1:])
    return out


@pytest.fixture(scope="module")
def exact_posterior():
    """Marginal median and 90% interval of loc and scale, by quadrature on a fine grid."""
    y = np.asarray(3.0 + 1.5 * jax.random.normal(jax.random.PRNGKey(0), (100,)), np.float64)
    loc = np.linspace(2.0, 4.4, 801)
    log_scale = np.linspace(np.log(0.9), np.log(2.4), 801)
    L, S = np.meshgrid(loc, log_scale, indexing="ij")
    log_post = (
        stats.norm.logpdf(L, 0.0, 10.0)
        + stats.norm.logpdf(S, 0.0, 1.0)  # LogNormal(0, 1) in log space: the Jacobian included
        + stats.norm.logpdf(y[None, None, :], L[..., None], np.exp(S)[..., None]).sum(-1)
    )
    post = np.exp(log_post - log_post.max())

    def marginal(values, weights):
        cdf = np.cumsum(weights) / weights.sum()
        return tuple(float(np.interp(q, cdf, values)) for q in (0.5, 0.05, 0.95))

    return {"loc": marginal(loc, post.sum(1)), "scale": marginal(np.exp(log_scale), post.sum(0))}


def test_quickstart_prints_what_the_readme_shows(exact_posterior):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    printed = parse_quickstart(out.getvalue())
    shown = parse_quickstart(readme_block("The first one", "text"))
    assert set(printed) == set(shown) == {"loc", "scale"}
    for name in printed:
        # the README's numbers are the script's, to the digits printed (rounding on another CPU)
        np.testing.assert_allclose(printed[name], shown[name], atol=2e-3, err_msg=name)
        # and the fit is the posterior's: a mean-field Normal is close to exact on this model
        np.testing.assert_allclose(printed[name], exact_posterior[name], atol=0.04, err_msg=name)
    final_loss = re.search(r"final loss ([\d.]+)", out.getvalue())
    assert final_loss is not None
    assert f"final loss {final_loss.group(1)}" in readme_block("The first one", "text")


def test_fifteen_line_example_runs_and_its_comment_is_true(exact_posterior):
    code = readme_block("## In 15 lines", "python")
    assert len(code.strip().splitlines()) <= 16
    comment = re.search(r"guide\.median\(result\.params\)\s+# (\{.*\})", code)
    assert comment is not None, "the example's median comment"
    claimed = ast.literal_eval(comment.group(1))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    median = namespace["guide"].median(namespace["result"].params)
    for name, value in claimed.items():
        np.testing.assert_allclose(float(median[name]), value, atol=2e-3, err_msg=name)
        np.testing.assert_allclose(value, exact_posterior[name][0], atol=0.04, err_msg=name)
