"""The chunked matrix-state Pallas kernel of linear_attention, which also runs the gated delta
rule's chunks: interpret mode on CPU against the float64 lax.scan oracles (outputs, final
state and every gradient, the initial state's included, from one VJP whose random cotangent
covers o and the final state; T not a multiple of the chunk, a nonzero initial state, packed
segments with padding), race detection of the forward and backward kernels, and lowering for
TPU of the forward and the VJP at the shapes our layers and FLA's benchmarks use; the Mosaic
GPU kernels (bfloat16 matmul operands: the bfloat16 tolerance) in Mosaic GPU's interpreter
against the same oracles, lowered for cuda, and compiled on a GPU (`gpu`)."""
import functools

import jax
import jax.numpy as jnp
import pytest

from layers.ops import _pallas, common, gated_delta_rule, linear_attention
from layers.ops.gated_delta_rule import pallas as gdr_pallas
from layers.ops.linear_attention import pallas
from tests import harness, kernels
from tests.layers import test_linear_attention_layers as layer_tests
from tests.ops import test_gated_delta_rule, test_linear_attention

T, CHUNK = 21, 8  # three chunks, the last one partial
OPS = {"linear_attention": (test_linear_attention, pallas.linear_attention),
       "gated_delta_rule": (test_gated_delta_rule, gdr_pallas.gated_delta_rule)}
BF16_TOL = 2e-2


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
  """The kernels with CHUNK-step chunks, so a tiny T crosses chunks."""
  for op, (_, form) in OPS.items():
    monkeypatch.setitem(common.FORMS[op], "pallas", functools.partial(form, chunk_size=CHUNK))


def _check(op, dtype, tol, decay=True, gate=(0.0, 0.5)):
  tests, _ = OPS[op]
  xs, h0 = tests._inputs(T, gate=gate)
  if not decay:
    xs = xs[:-1]  # g is the last input of both ops: g=None (DeltaNet, plain linear attention)
  segment_ids = harness.packed_segment_ids(tests.B, T).at[1, :3].set(0)  # leading padding
  harness.assert_form_matches_reference(
      kernels.cast_inputs(tests._op("pallas"), dtype), tests._op("reference"), xs, h0,
      segment_ids, *tol, what=f"{op} pallas {jnp.dtype(dtype).name} decay={decay}")


CHECKS = {}
for _op in OPS:
  CHECKS.update({
      f"{_op} float32": functools.partial(_check, _op, jnp.float32, (1e-5, 1e-4)),
      f"{_op} bfloat16": functools.partial(_check, _op, jnp.bfloat16, (BF16_TOL, BF16_TOL)),
      f"{_op} no decay": functools.partial(_check, _op, jnp.float32, (1e-5, 1e-4), False),
      # Mamba2/GDN initialisation: gates sum to about -100 over a 64-token chunk
      f"{_op} strong decay": functools.partial(_check, _op, jnp.float32, (1e-5, 1e-4),
                                               gate=test_linear_attention.INIT_GATE),
  })
DEFAULT_TIER = ("linear_attention float32", "gated_delta_rule float32")


test_interpret_matches_reference, test_compiled_on_tpu_matches_reference = (
    kernels.check_tests(CHECKS, DEFAULT_TIER))


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_lane_padded_widths(op):
  """BASED's widths: K = 153 Taylor features (padded to 256 lanes inside the wrapper) and
  V = 17 (head dim + 1, padded to 128)."""
  tests, _ = OPS[op]
  B, H, K, V = 1, 1, 153, 17
  q, k = (harness.rand(i, (B, T, H, K)) / K for i in range(2))
  v, h0 = harness.rand(2, (B, T, H, V)), harness.rand(3, (B, H, K, V))
  gates = (harness.rand(4, (B, T, H), low=0.05, high=0.95),) * (op == "gated_delta_rule")
  g = -harness.rand(5, (B, T, H), low=0.0, high=0.5)
  harness.assert_form_matches_reference(
      kernels.cast_inputs(tests._op("pallas"), jnp.float32), tests._op("reference"),
      (q, k, v, *gates, g), h0, harness.packed_segment_ids(B, T), what=f"{op} K=153, V=17")


@pytest.mark.slow
@pytest.mark.parametrize("name", layer_tests.FORMS)
def test_layers_on_the_kernel(monkeypatch, name):
  """RetNet, Based (15 Taylor features at head dim 4), Gated DeltaNet and DeltaNet on the
  kernel equal their reference form (outputs, final state, input gradients)."""
  monkeypatch.setitem(layer_tests.FORMS, name, (layer_tests.FORMS[name][0], ("pallas",)))
  layer_tests.test_forms_agree_at_layer_level(name)


@pytest.mark.slow
def test_decay_gradient_has_the_final_state_term():
  """PALLAS.md rule 21: with only a final-state cotangent, a nonzero initial state and two
  segments, dg is all final-state term (wrong by O(1) without it)."""
  tests = test_linear_attention
  (q, k, v, g), h0 = tests._inputs(T, seed=3)
  segment_ids = jnp.where(jnp.arange(T) < 9, 1, 2)[None].repeat(tests.B, 0)
  f32 = lambda x: x.astype(jnp.float32)

  def dg(impl, *args):
    final = lambda g: linear_attention(*args[:3], g, initial_state=args[4],
                                       segment_ids=segment_ids, impl=impl)[1]
    return jax.grad(lambda g: jnp.sum(final(g) * args[4]))(args[3])
  got = jax.jit(functools.partial(dg, "pallas"))(*map(f32, (q, k, v, g, h0)))
  want = jax.jit(functools.partial(dg, "reference"))(q, k, v, g, h0)
  harness.assert_close(got, want, 1e-4, "dg from the final state")


def _race_inputs(delta):
  """Kernel-layout inputs: two heads (for the two simulated cores), two chunks of 8."""
  heads, length, width = 2, 16, 8
  seqs = [harness.rand(i, (heads, length, width), jnp.float32) * 0.3 for i in range(3 + delta)]
  G = jnp.cumsum(-harness.rand(5, (heads, 2, 8), jnp.float32, 0.0, 0.5), axis=-1)
  seg = jnp.zeros((heads, 2, 8), jnp.float32).at[0, 1, 3:].set(1.0)  # a reset in chunk 1
  h0 = harness.rand(6, (heads, width, width), jnp.float32)
  return (*seqs[:3], seqs[3] if delta else None, G, seg, h0)


@pytest.mark.slow
@pytest.mark.parametrize("delta", [False, True], ids=["linear_attention", "delta"])
def test_no_races_forward(delta):
  """The forward kernel under race detection (uninitialised memory NaN) equals the plain
  interpret run."""
  args = _race_inputs(delta)
  call = functools.partial(pallas._forward_call, scale=0.5)
  with kernels.race_detection() as params:
    raced = call(*args, interpret=params)
  harness.assert_close(raced, call(*args, interpret=True), 1e-6, "forward under race detection")


@pytest.mark.slow
@pytest.mark.parametrize("delta", [False, True], ids=["linear_attention", "delta"])
def test_no_races_backward(delta):
  args = _race_inputs(delta)
  o, final, entries = pallas._forward_call(*args, scale=0.5, interpret=True)
  backward = (*args[:6], entries, o, final)
  call = functools.partial(pallas._backward_call, scale=0.5)
  with kernels.race_detection() as params:
    raced = call(*backward, interpret=params)
  harness.assert_close([x for x in raced if x is not None],
                       [x for x in call(*backward, interpret=True) if x is not None], 1e-6,
                       "backward under race detection")


def _op_fn(op):
  """The op with every array an argument (abstract shapes for export)."""
  if op == "linear_attention":
    return lambda q, k, v, beta, g, h0, ids: linear_attention(
        q, k, v, g, initial_state=h0, segment_ids=ids, impl="pallas")
  return lambda q, k, v, beta, g, h0, ids: gated_delta_rule(
      q, k, v, beta, g, initial_state=h0, segment_ids=ids, impl="pallas")


def _assert_lowers(monkeypatch, op, B, T, H, K, V, dtype):
  monkeypatch.setitem(common.FORMS[op], "pallas", OPS[op][1])  # the default chunk
  s = lambda *shape, d=dtype: jax.ShapeDtypeStruct(shape, d)
  kernels.assert_lowers_for_tpu(
      _op_fn(op), s(B, T, H, K), s(B, T, H, K), s(B, T, H, V), s(B, T, H), s(B, T, H),
      s(B, H, K, V, d=jnp.float32), s(B, T, d=jnp.int32), kernels=1)


# (B, T, H, K, V): the realistic shape; GatedDeltaNet's and RetNet's default K, V.
EXPORT_SHAPES = [(2, 2048, 4, 128, 128), (2, 2048, 4, 256, 512)]
# FLA's benchmark grid (B, T, H, D) with K = V = D
FLA_GRID = [(1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (4, 4096, 64, 128),
            (8, 1024, 8, 64)]
# BASED: the Taylor map's 153 features (d = 16), V = head dim + 1 (64 and 16); Mamba2:
# N = 64 / 128 states, P = 64 channels per head; a single step
LAYER_SHAPES = [(2, 2048, 4, 153, 65), (2, 2048, 4, 153, 17), (2, 2048, 8, 64, 64),
                (2, 2048, 8, 128, 64), (3, 1, 2, 16, 16)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape, dtype", [(EXPORT_SHAPES[0], jnp.float32),
                                          (EXPORT_SHAPES[1], jnp.bfloat16)])
def test_lowers_for_tpu(monkeypatch, op, shape, dtype):
  _assert_lowers(monkeypatch, op, *shape, dtype)


# Mosaic GPU kernels (C = 64, bfloat16 matmul operands: checked at the bfloat16 tolerance) ---
GPU_T = 70  # two GPU chunks, the last one partial


def _gpu_check(op, batch=1, decay=True):
  """The GPU kernels against the float64 oracle: nonzero initial state, packed segments with
  leading padding, T not a multiple of the chunk; float32 inputs (rounded to bfloat16 for the
  matmuls inside)."""
  tests, _ = OPS[op]
  xs, h0 = tests._inputs(GPU_T)
  xs, h0 = tuple(x[:batch] for x in xs[:len(xs) - (not decay)]), h0[:batch]
  segment_ids = harness.packed_segment_ids(batch, GPU_T).at[-1, :3].set(0)
  harness.assert_form_matches_reference(
      kernels.cast_inputs(tests._op("pallas"), jnp.float32), tests._op("reference"), xs, h0,
      segment_ids, BF16_TOL, BF16_TOL, what=f"{op} GPU kernel decay={decay}")


GPU_CHECKS = {f"{op}{' no decay' * (not decay)}": functools.partial(_gpu_check, op, 2, decay)
              for op in OPS for decay in (True, False)}


@pytest.mark.parametrize("op", [
    "linear_attention", pytest.param("gated_delta_rule", marks=pytest.mark.slow)])
def test_gpu_kernel_interpreted_matches_reference(monkeypatch, op):
  """The Mosaic GPU kernels' own bodies (forward and backward) in Mosaic GPU's interpreter
  (stand-ins for tiled SMEM, transposed operands and wgmma: a float32 dot of the same
  bfloat16 operands), which is slow: one batch row, two heads, two chunks."""
  monkeypatch.setattr(_pallas, "CPU_INTERPRETS", "gpu")
  _gpu_check(op)


test_gpu_kernel_interpreted_matches_reference_wide, test_compiled_on_gpu_matches_reference = (
    kernels.gpu_check_tests(GPU_CHECKS, _pallas))


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_gpu_kernel_interpreted_wide_keys(monkeypatch, op):
  """K = 136 (padded to 256): linear attention on two key blocks (`_split_keys`), the delta
  rule on 32 value columns per program."""
  tests, _ = OPS[op]
  monkeypatch.setattr(_pallas, "CPU_INTERPRETS", "gpu")
  xs, h0 = tests._inputs(GPU_T)
  keys = lambda x, axis: jnp.concatenate([x] * 17, axis=axis)[:1] / 17 ** 0.5  # K = 136
  xs = (keys(xs[0], 3), keys(xs[1], 3), *(x[:1] for x in xs[2:]))
  harness.assert_form_matches_reference(
      kernels.cast_inputs(tests._op("pallas"), jnp.float32), tests._op("reference"), xs,
      keys(h0, 2), harness.packed_segment_ids(1, GPU_T), BF16_TOL, BF16_TOL,
      what=f"{op} GPU kernel K=136")


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_gpu_kernel_interpreted_narrow_value_blocks(monkeypatch, op):
  """Vb = 32 value columns per program (what `benchmarks.fla_compare` also times): V = 6
  padded to 32, two value blocks when V = 40."""
  monkeypatch.setattr(_pallas, "CPU_INTERPRETS", "gpu")
  monkeypatch.setattr(pallas, "GPU_BLOCK_V", 32)
  tests, _ = OPS[op]
  xs, h0 = tests._inputs(GPU_T)
  values = lambda x: jnp.concatenate([x] * 7, axis=-1)[..., :40][:1]  # V = 40
  xs = (*(x[:1] for x in xs[:2]), values(xs[2]), *(x[:1] for x in xs[3:]))
  harness.assert_form_matches_reference(
      kernels.cast_inputs(tests._op("pallas"), jnp.float32), tests._op("reference"), xs,
      values(h0), harness.packed_segment_ids(1, GPU_T), BF16_TOL, BF16_TOL,
      what=f"{op} GPU kernel Vb=32")


def _assert_lowers_for_cuda(monkeypatch, op, B, T, H, K, V, dtype):
  monkeypatch.setitem(common.FORMS[op], "pallas", OPS[op][1])
  s = lambda *shape, d=dtype: jax.ShapeDtypeStruct(shape, d)
  kernels.assert_lowers_for_cuda(
      _op_fn(op), s(B, T, H, K), s(B, T, H, K), s(B, T, H, V), s(B, T, H), s(B, T, H),
      s(B, H, K, V, d=jnp.float32), s(B, T, d=jnp.int32), kernels=2)


# the realistic shape; our layers' defaults K = 256, V = 512 (RetNet: keys split into blocks;
# GatedDeltaNet: 32 value columns per program)
CUDA_SHAPES = [(op, shape) for shape in EXPORT_SHAPES for op in OPS]


@pytest.mark.parametrize("op, shape", CUDA_SHAPES)
def test_lowers_for_cuda(monkeypatch, op, shape):
  """Forward and backward Mosaic GPU kernels (plgpu.kernel, wgmma; no Triton)."""
  _assert_lowers_for_cuda(monkeypatch, op, *shape, jnp.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(*s, s[-1]) for s in FLA_GRID] + LAYER_SHAPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers_on_the_wide_grid(monkeypatch, platform, op, shape, dtype):
  """FLA's grid and our layers' defaults, on the TPU and the Mosaic GPU kernels."""
  lowers = {"tpu": _assert_lowers, "cuda": _assert_lowers_for_cuda}[platform]
  lowers(monkeypatch, op, *shape, dtype)


def test_gpu_delta_rule_with_wider_keys_raises(monkeypatch):
  """K > 256 overflows the delta kernel's SMEM: a clear error on a GPU."""
  tests, _ = OPS["gated_delta_rule"]
  (q, k, v, beta, g), h0 = tests._inputs(4)
  keys = lambda x, axis: jnp.concatenate([x] * 40, axis=axis)  # K = 320
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match="gated_delta_rule: impl='pallas' has no GPU kernel"):
    jax.eval_shape(tests._op("pallas"), (keys(q, 3), keys(k, 3), v, beta, g), keys(h0, 2), None)
