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


def test_analytic_cost_multiplies_loop_bodies_by_their_trip_counts():
  """A matmul looped 100 times costs 100 matmuls (XLA's cost analysis counts one); a cond costs
  its costliest branch; a depthwise conv counts one filter per output element; bytes are the
  operands and results of the matmuls."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  from benchmarks import roofline
  n = 32
  x = jnp.ones((n, n), jnp.float32)
  matmul = 2 * n ** 3
  looped = roofline.cost(lambda x: lax.fori_loop(0, 100, lambda i, c: c @ x, x), x)
  assert looped.loop_steps == 100 and looped.unknown_loops == 0
  assert 100 * matmul <= looped.flops <= 100 * matmul + 1000  # + the loop counter's adds
  assert looped.bytes == 100 * 3 * n * n * 4
  branches = roofline.cost(lambda x: lax.cond(x[0, 0] > 0, lambda: x @ x @ x, lambda: x), x)
  assert 2 * matmul <= branches.flops < 2 * matmul + 100
  grad = roofline.cost(jax.grad(lambda x: jnp.sum(x @ x)), x)
  assert grad.flops >= 2 * matmul  # the backward's two matmuls (the forward's is dead code)
  signal, kernel = jnp.ones((2, 100, 8)), jnp.ones((5, 1, 8))
  conv = roofline.cost(lambda s, k: lax.conv_general_dilated(
      s, k, (1,), [(4, 0)], dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=8),
      signal, kernel)
  assert conv.flops == 2 * (2 * 100 * 8) * 5
  unknown = roofline.cost(lambda x: lax.while_loop(lambda c: c[0, 0] < 10, lambda c: c @ x, x), x)
  assert unknown.unknown_loops == 1 and unknown.flops >= matmul
