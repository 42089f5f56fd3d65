"""`python -m layers.ops`: runs every op in each of its forms on a random batch and prints how
far each form is from the sequential reference (norm-relative, float32) and its output."""
import jax
import jax.numpy as jnp

from layers import ops


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def main():
  key = jax.random.split(jax.random.key(0), 6)
  B, T, D = 2, 257, 16
  a = jax.random.uniform(key[0], (B, T, D), minval=0.5, maxval=0.99)
  b = jax.random.normal(key[1], (B, T, D))
  h0 = jnp.ones((B, D))
  segment_ids = jnp.repeat(jnp.array([[1, 2], [1, 1]]), jnp.array([100, 157]), axis=1,
                           total_repeat_length=T)
  print(f"inputs [B, T, D] = {(B, T, D)}, two segments in row 0")
  print(f"{'op':18s} {'form':12s} {'rel. error vs reference':>24s}  mean |h_T|")
  for name, fn, args in [("linear_scan", ops.linear_scan, (a, b, h0)),
                         ("log_linear_scan", ops.log_linear_scan, (jnp.log(a), b, h0))]:
    ref, ref_final = fn(*args, impl="reference", segment_ids=segment_ids)
    for impl in ("reference", "associative"):
      h, final = jax.jit(lambda *x, impl=impl: fn(*x, impl=impl, segment_ids=segment_ids))(*args)
      print(f"{name:18s} {impl:12s} {_rel(h, ref):24.2e}  {float(jnp.abs(final).mean()):.4f}")

  H, half_n = D, 4
  log_dt = jnp.log(jnp.full((H,), 0.05))
  A_re, A_im = -0.5 * jnp.ones((H, half_n)), jnp.pi * jnp.tile(jnp.arange(half_n), (H, 1))
  C = jax.random.normal(key[2], (H, half_n)) + 0j
  x0 = jnp.ones((B, H, half_n), jnp.complex64)
  conv = lambda impl: ops.s4d_conv(b, log_dt, A_re, A_im, C, initial_state=x0,
                                   segment_ids=segment_ids, impl=impl)
  (y_ref, _), (y_fft, final) = conv("reference"), conv("fft")
  print(f"{'s4d_conv':18s} {'fft':12s} {_rel(y_fft, y_ref):24.2e}  "
        f"{float(jnp.abs(final).mean()):.4f}")

  q, k, v = (jax.random.normal(kk, (B, T, 2, 8)) for kk in key[3:6])
  full = ops.attention(q, k, v, window=32)

  def decode(cache, xs):
    o_t, cache = ops.attention_step(*xs, cache)
    return cache, o_t
  _, o = jax.lax.scan(decode, ops.init_cache(B, 32, 2, 8, 8),
                      tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v)))
  print(f"{'attention':18s} {'step':12s} {_rel(jnp.moveaxis(o, 0, 1), full):24.2e}  "
        "(window 32: ring-buffer decoding vs whole sequence)")


if __name__ == "__main__":
  main()
