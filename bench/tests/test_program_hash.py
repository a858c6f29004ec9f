"""``python -m bench program``: the hash sees the program, not its names."""

import jaxguides as jg
from bench.program_hash import chunk_program, normalized


def test_names_and_locations_do_not_count_but_the_program_does():
    text = chunk_program("normal", jg.AutoDelta, length=16)
    renamed = text.replace("%update_step.", "%_update.").replace("loop/chunks.py", "_fit.py")
    assert renamed != text and normalized(renamed) == normalized(text)
    assert normalized(chunk_program("normal", jg.AutoDelta, length=32)) != normalized(text)
    assert normalized(chunk_program("normal", jg.AutoNormal, length=16)) != normalized(text)
