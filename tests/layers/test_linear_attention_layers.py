"""RetNet, Based, BaseConv, Gated DeltaNet and DeltaNet beyond the shared mixer checks: the op
forms agree at layer level, the Taylor feature map and Based's normaliser match their closed
forms, initialisation, recurrent state sizes, and clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import (Attention, BaseConv, Based, DeltaNet, GatedDeltaNet, RetNet, state_bytes,
                    taylor_feature_map)
from layers.retnet import retention_log_decay
from tests import harness
from tests.layers import mixer_checks as checks

B, T, D = 2, 13, 8
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
FORMS = {  # mixer -> (module for an impl, the forms that must agree with "reference")
    "retnet": (lambda impl: RetNet(D, num_heads=2, impl=impl, chunk_size=4, **F64),
               ("parallel", "chunk")),
    "based": (lambda impl: Based(D, num_heads=2, head_dim=4, impl=impl, chunk_size=4,
                                 **F64), ("parallel", "chunk")),
    "gated_deltanet": (lambda impl: GatedDeltaNet(D, num_heads=2, head_dim=4, impl=impl,
                                                  chunk_size=4, **F64), ("chunk",)),
    "deltanet": (lambda impl: DeltaNet(D, num_heads=2, head_dim=4, impl=impl, chunk_size=4,
                                       **F64), ("chunk",)),
}


@pytest.mark.parametrize("name", FORMS)
def test_forms_agree_at_layer_level(name):
  """Outputs, final state and input gradients of every form equal the recurrent one, on a
  packed batch continuing a given state."""
  make, forms = FORMS[name]
  x = harness.rand(0, (B, T, D))
  segment_ids = harness.packed_segment_ids(B, T, seed=2)
  variables = harness.init_variables(make("reference"), jax.random.key(0), x)
  state0 = checks.whole(make("reference"), variables)(harness.rand(1, (B, 3, D)))[1]

  def run(impl):
    fn = lambda x: make(impl).apply(variables, x, state0, segment_ids)
    out, pullback = jax.vjp(fn, x)
    return out, pullback((harness.rand(2, (B, T, D)), jax.tree.map(jnp.zeros_like, out[1])))

  (y_ref, state_ref), dx_ref = jax.jit(run, static_argnums=0)("reference")
  for impl in forms:
    (y, state), dx = jax.jit(run, static_argnums=0)(impl)
    harness.assert_close(y, y_ref, harness.OUT_TOL, f"{name} {impl}: outputs")
    harness.assert_close(state, state_ref, harness.OUT_TOL, f"{name} {impl}: final state")
    harness.assert_close(dx, dx_ref, harness.GRAD_TOL, f"{name} {impl}: input gradient")


@pytest.mark.parametrize("d, scale", [(16, None), (3, 0.7)])
def test_taylor_feature_map_closed_form(d, scale):
  q, k = harness.rand(0, (5, d)), harness.rand(1, (5, d))
  phi_q, phi_k = taylor_feature_map(q, scale), taylor_feature_map(k, scale)
  assert phi_q.shape == (5, 1 + d + d * (d + 1) // 2)
  s = (d ** -0.5 if scale is None else scale) * jnp.einsum("nd,nd->n", q, k)
  harness.assert_close(jnp.einsum("nf,nf->n", phi_q, phi_k), 1 + s + s ** 2 / 2, 1e-12,
                       "phi(q).phi(k) = 1 + s + s^2/2")


def test_taylor_feature_map_order_and_count():
  """153 features at d = 16; DESIGN's order [1, x', x'^2 / sqrt 2, x'_i x'_j (i < j)]."""
  assert taylor_feature_map(jnp.ones((16,))).shape == (153,)
  a, b, c = 1.0, 2.0, 3.0
  expected = [1, a, b, c, a * a / 2 ** 0.5, b * b / 2 ** 0.5, c * c / 2 ** 0.5, a * b, a * c,
              b * c]
  harness.assert_close(taylor_feature_map(jnp.array([a, b, c]), scale=1.0),
                       jnp.array(expected), 1e-15, "feature order")


def test_based_equals_normalised_taylor_attention():
  """y_t = W_o sum_{s<=t} a_ts v_s / (sum_{s<=t} a_ts + eps), a_ts = 1 + s + s^2/2 with
  s = q_t.k_s / sqrt(F), written out quadratically (no feature map)."""
  module = Based(D, num_heads=2, head_dim=4, **F64)
  x = harness.rand(0, (B, T, D))
  variables = harness.init_variables(module, jax.random.key(0), x)
  params = variables["params"]
  q, k, v = (jnp.einsum("btd,dhf->bthf", x, params[p]["kernel"])
             for p in ("q_proj", "k_proj", "v_proj"))
  s = jnp.einsum("bthf,bshf->bhts", q, k) / 2.0
  a = jnp.where(jnp.tril(jnp.ones((T, T), bool)), 1 + s + s ** 2 / 2, 0)
  y = jnp.einsum("bhts,bshv->bthv", a, v) / (jnp.einsum("bhts->bth", a)[..., None] + 1e-6)
  expected = jnp.einsum("bthv,hvd->btd", y, params["out_proj"]["kernel"])
  harness.assert_close(module.apply(variables, x)[0], expected, 1e-12, "Based closed form")


def test_retnet_decays():
  np.testing.assert_allclose(np.exp(retention_log_decay(4)),
                             [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256], rtol=1e-15)


def test_retnet_init_and_shapes():
  module = RetNet(64, num_heads=4)
  params = harness.init_variables(module, jax.random.key(0), jnp.ones((1, 3, 64)))["params"]
  assert params["v_proj"]["kernel"].shape == params["g_proj"]["kernel"].shape == (64, 4, 32)
  assert params["q_proj"]["kernel"].shape == (64, 4, 16)
  assert params["out_proj"]["kernel"].shape == (4, 32, 64)
  for name, gain, fans in (("q_proj", 2 ** -2.5, 128), ("g_proj", 2 ** -2.5, 192),
                           ("out_proj", 2 ** -1, 192)):
    bound = gain * (6 / fans) ** 0.5  # xavier_uniform
    w = np.asarray(params[name]["kernel"])
    assert np.abs(w).max() <= bound and abs(w.std() - bound / 3 ** 0.5) < 0.1 * bound, name


def test_gated_deltanet_init_and_decay():
  """A = exp(A_log) in [0, 16], dt = softplus(dt_bias) log-uniform in [dt_min, dt_max]; the
  decay exp(g) is in (0, 1]."""
  module = GatedDeltaNet(64, num_heads=32, head_dim=4)
  params = harness.init_variables(module, jax.random.key(0), jnp.ones((1, 3, 64)))["params"]
  A, dt = np.exp(params["A_log"]), np.asarray(jax.nn.softplus(params["dt_bias"]))
  assert A.shape == dt.shape == (32,)
  assert 0 < A.min() and A.max() <= 16 and A.std() > 3
  assert 1e-3 * (1 - 1e-5) <= dt.min() and dt.max() <= 1e-1 * (1 + 1e-5)
  assert np.log(dt).std() > 0.5  # log-uniform, not collapsed
  g = module.apply({"params": params}, harness.rand(0, (1, 5, 64), jnp.float32),
                   method=lambda m, x: m.log_decay(x))
  assert g.shape == (1, 5, 32) and bool(jnp.all(g <= 0))


def test_allow_neg_eigval_changes_the_layer_and_keeps_step_equal_whole():
  """beta in (0, 2): a different layer with the same parameters, still step == whole."""
  make = lambda **kw: GatedDeltaNet(D, num_heads=2, head_dim=4, **kw, **F64)
  module, variables, x = checks.setup(lambda: make(allow_neg_eigval=True), B, T, D)
  checks.assert_step_equals_whole(module, variables, x)
  y_neg = checks.whole(module, variables)(x)[0]
  assert harness.rel_err(y_neg, checks.whole(make(), variables)(x)[0]) > 1e-3


def test_deltanet_has_no_decay_parameters():
  params = harness.init_variables(DeltaNet(D, num_heads=2, head_dim=4), jax.random.key(0),
                                  jnp.ones((1, 3, D)))
  assert set(params["params"]) == {"qkv_proj", "conv", "b_proj", "g_proj", "norm", "out_proj"}
  assert params["params"]["conv"]["kernel"].shape == (4, 2 * (4 + 4 + 8))
  assert params["params"]["norm"]["scale"].shape == (8,)  # per head, shared by the heads


@pytest.mark.parametrize("module, expected", [
    # H K V floats (4 bytes) + the rotary position (int32)
    (RetNet(64, num_heads=4), 4 * 16 * 32 * 4 + 4),
    # H (1 + F + F (F + 1) / 2) (V + 1): 153 Taylor features, values and the normaliser
    (Based(64, num_heads=2), 2 * 153 * 33 * 4),
    # conv window (W - 1) E
    (BaseConv(64), 2 * 128 * 4),
    # conv window (W - 1) H (2 K + V) + H K V
    (GatedDeltaNet(64, num_heads=2, head_dim=32), (3 * 2 * 128 + 2 * 32 * 64) * 4),
    (DeltaNet(64, num_heads=2, head_dim=32, expand_v=1.0), (3 * 2 * 96 + 2 * 32 * 32) * 4),
    # sliding window: the ring buffer of `window` keys and values, whatever max_len
    (Attention(64, num_heads=2, head_dim=32, window=16), 2 * 16 * 2 * 32 * 4 + 4),
])
def test_state_bytes(module, expected):
  assert state_bytes(module, batch_size=1, max_len=4096) == expected
  assert state_bytes(module, batch_size=3, max_len=4096) == 3 * expected


@pytest.mark.parametrize("make, message", [
    (lambda: RetNet(D, num_heads=3), r"RetNet: num_heads=3 must divide d_model=8"),
    (lambda: RetNet(D, num_heads=8), r"into an even head dim"),
    (lambda: Based(D, num_heads=3), r"Based: num_heads=3 must divide d_model=8"),
    (lambda: GatedDeltaNet(D, num_heads=2, head_dim=0), r"GatedDeltaNet: num_heads, head_dim"),
    (lambda: DeltaNet(D, num_heads=2, head_dim=4, impl="fft"),
     r"gated_delta_rule: unknown impl='fft'"),
    (lambda: RetNet(D, num_heads=2, impl="associative"),
     r"linear_attention: unknown impl='associative'"),
])
def test_bad_configs_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make().init(jax.random.key(0), jnp.ones((1, 3, D)))


@pytest.mark.parametrize("make, state, message", [
    (lambda: RetNet(D, num_heads=2), {"S": jnp.zeros((1, 2, 4, 4)), "pos": jnp.zeros((1,))},
     r"linear_attention: initial_state must have shape \[B, H, K, V\] = \(1, 2, 4, 8\)"),
    (lambda: Based(D, num_heads=2, head_dim=2), jnp.zeros((1, 2, 6, 4)),
     r"linear_attention: initial_state must have shape \[B, H, K, V\] = \(1, 2, 6, 5\)"),
    (lambda: GatedDeltaNet(D, num_heads=2, head_dim=4),
     {"conv": jnp.zeros((1, 3, 32)), "S": jnp.zeros((1, 2, 4, 4))},
     r"gated_delta_rule: initial_state must have shape \[B, H, K, V\] = \(1, 2, 4, 8\)"),
])
def test_wrong_state_shapes_raise(make, state, message):
  module = make()
  variables = harness.init_variables(module, jax.random.key(0), jnp.ones((1, 3, D)))
  with pytest.raises(ValueError, match=message):
    module.apply(variables, jnp.ones((1, 3, D)), state)
