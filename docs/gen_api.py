"""Write ``docs/api.md``, the API reference, from the docstrings of ``jaxguides.__all__``.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is not what this would write

``tests/test_docs.py`` runs the check, so every public name is documented and
the page follows the code.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import sys

import jaxguides as jg

PAGE = pathlib.Path(__file__).with_name("api.md")
HEADER = """# jaxguides API reference

Generated from the docstrings by `python docs/gen_api.py` (checked in CI: every
public name of `jaxguides` is here and the page matches the code). The README
says how the pieces fit together.
"""


def _signature(obj: object, name: str) -> str:
    """``name(signature)``, with default values that are functions named, not addressed."""
    try:
        text = f"{name}{inspect.signature(obj)}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return name
    return re.sub(r"<function (\S+) at 0x[0-9a-f]+>", r"\1", text)


def render() -> str:
    parts = [HEADER]
    for name in sorted(jg.__all__, key=str.lower):
        obj = getattr(jg, name)
        kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
        doc = inspect.getdoc(obj) or ""
        if getattr(obj, "__module__", "").startswith("numpyro"):
            doc = f"NumPyro's own `{obj.__module__}.{name}`, re-exported.\n\n" + doc.split("\n\n")[0]
        parts.append(f"## `{name}` ({kind})\n\n```python\n{_signature(obj, name)}\n```\n\n{doc}\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python docs/gen_api.py")
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
