"""`python -m benchmarks`: the README sections it rewrites, and the decode benchmark's claim
that a recurrent model's decode loop is one program whatever the context."""
import pytest

from benchmarks import __main__ as bench_main
from benchmarks import decode
from tests.test_readme import README


def test_the_readme_has_a_section_for_every_benchmark():
  for name in bench_main.BENCHMARKS:
    assert f"<!-- bench:{name} -->\n" in README and f"<!-- /bench:{name} -->" in README, name


def test_replace_section_rewrites_between_its_markers_only():
  text = ("a\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nb\n"
          "<!-- bench:y -->\nkept\n<!-- /bench:y -->\n")
  new = bench_main.replace_section(text, "x", "| t |\n|---|\n| 1 |")
  assert new == text.replace("old\n", "| t |\n|---|\n| 1 |\n")
  assert bench_main.replace_section(new, "x", "old") == text  # idempotent round trip
  with pytest.raises(ValueError, match="bench:z"):
    bench_main.replace_section(text, "z", "body")


def test_decode_programs_of_the_memory_model_and_block_transformer_grow_with_the_context():
  """The attention LM with a memory layer and the Block Transformer (whose block decoder caches
  one entry per block) hold attention caches: their decode programs and states grow."""
  for name in decode.EXTRA:
    model = decode.build(name, d_model=32, n_layers=2)
    assert decode.decode_program(model, 2, 16) != decode.decode_program(model, 2, 4096), name
    assert not decode.is_recurrent(name), name


def test_decode_loop_is_one_program_at_every_context_unless_the_state_grows():
  """Full attention's KV cache grows with the context, so does its decode program; every other
  mixer's state has one shape, so its decode loop is the same program (and costs the same)
  after 16 or 4096 tokens."""
  for mixer in decode.mixers():
    model = decode.language_model(mixer, d_model=32, n_layers=1)
    same = decode.decode_program(model, 2, 16) == decode.decode_program(model, 2, 4096)
    assert same == decode.is_recurrent(mixer) == (mixer != "attention"), mixer
