"""The FFT form of the S4D convolution: the kernel K_l = 2 Re(C B_bar A_bar^l) applied by an
FFT convolution, one per segment for packed rows of up to FFT_SEGMENTS segments; other batches
run the recurrence chunk by chunk (`chunked_recurrence`)."""
import jax.numpy as jnp
from jax import lax

from layers.ops import _chunk, common

FFT_SEGMENTS = 2  # packed rows of up to this many segments (e.g. text + padding) stay on FFT
RECURRENCE_CHUNK = 64  # steps per rematerialised chunk of the fallback recurrence


def powers(A_bar, length):
  """A_bar^l for l = 0 .. length - 1 as exp(l log A_bar): the Vandermonde matrix [H, N/2, L]."""
  lags = jnp.arange(length, dtype=A_bar.real.dtype)
  return jnp.exp(jnp.einsum("hn,l->hnl", jnp.log(A_bar), lags))


def kernel(C_B, power):
  """K: [H, L] real, K_l = 2 Re sum_n (C B_bar)_n A_bar_n^l from C B_bar [H, N/2] and the
  powers A_bar^l [H, N/2, L]."""
  return 2 * jnp.einsum("hn,hnl->hl", C_B, power).real


def fft_conv(u, K):
  """y_t = sum_{s<=t} K_{t-s} u_s for u: [B, T, H], K: [H, L] (taps beyond T unused, missing
  taps zero), by an FFT zero-padded to 2T; computed in u's dtype."""
  T = u.shape[1]
  n = 2 * T
  u_f = jnp.fft.rfft(u, n=n, axis=1)
  k_f = jnp.fft.rfft(K[:, :T].astype(u.dtype), n=n, axis=-1)
  return jnp.fft.irfft(u_f * k_f.T[None], n=n, axis=1)[:, :T]


def s4d_conv(u, A_bar, B_bar, C, x0, segment_ids):
  """FFT form of `reference.s4d_conv` (same arguments and results).

  Rows of at most FFT_SEGMENTS segments (padding is one) are convolved per segment; a batch
  with a row of more segments runs the recurrence (`chunked_recurrence`), chosen at run time by
  `lax.cond`. So does a batch with a non-finite input: the FFT mixes every position of a row,
  so one NaN would poison the outputs before it too, where the recurrence keeps it to the
  outputs from it on (the check is one reduction over u; the slow path runs only on inputs
  that are already broken). Under jit both branches are compiled and the step's temporaries
  are those of the larger, so the recurrence keeps O(T / chunk) states, not O(T).
  """
  batch, length, _ = u.shape
  if segment_ids is None:
    index, num_segments, fits = jnp.zeros((batch, length), jnp.int32), 1, True
  else:
    index = jnp.cumsum(common.segment_starts(segment_ids, batch, length), axis=1)
    num_segments, fits = FFT_SEGMENTS, jnp.all(index[:, -1] < FFT_SEGMENTS)
  return lax.cond(fits & jnp.all(jnp.isfinite(u)),
                  lambda: _per_segment(u, A_bar, B_bar, C, x0, index, num_segments),
                  lambda: chunked_recurrence(u, A_bar, B_bar, C, x0, segment_ids))


def chunked_recurrence(u, A_bar, B_bar, C, x0, segment_ids, chunk_size=RECURRENCE_CHUNK):
  """`reference.s4d_conv` (same arguments and results) as a sequential scan inside chunks of
  `chunk_size` steps, the state x [B, H, N/2] carried across them:

    x_t = A_bar x_{t-1} + B_bar u_t (x_{t-1} := 0 at a segment start; padding keeps x, as
    do the steps that fill T up to whole chunks),
    y_t = 2 Re(C . x_t).

  The backward pass recomputes each chunk from its entry state (`_chunk.scan_chunks`), so
  only T / chunk_size states are kept, where the reference holds the [B, T, H, N/2] complex
  inputs and states of `linear_scan` and their residuals (about 7x the FFT form's step memory
  at ListOps' 2048 tokens).
  """
  batch, length, _ = u.shape
  resets = common.segment_starts(segment_ids, batch, length)
  real = jnp.ones((batch, length), bool) if segment_ids is None else segment_ids != 0

  def body(x, chunk):  # chunk: u [B, H, C, 1], resets and real [B, 1, C]
    def step(x, xs):
      u_t, reset_t, real_t = xs  # [B, H], [B, 1], [B, 1]
      x = jnp.where(reset_t[..., None], 0, x)
      x_next = A_bar[None] * x + jnp.einsum("hn,bh->bhn", B_bar, u_t)
      x = jnp.where(real_t[..., None], x_next, x)
      return x, 2 * jnp.einsum("hn,bhn->bh", C, x).real

    x, y = lax.scan(step, x, [jnp.moveaxis(a, 2, 0) for a in
                              (chunk[0][..., 0], chunk[1], chunk[2])])
    return x, jnp.moveaxis(y, 0, 2)[..., None]

  y, x_T = _chunk.scan_chunks(body, x0, (u[..., None], resets[..., None], real[..., None]),
                              chunk_size)
  return y[..., 0], x_T


def _per_segment(u, A_bar, B_bar, C, x0, index, num_segments):
  """The FFT convolution per segment k < num_segments (index: [B, T] segment of each token):

    y_t = (K * u [index = k])_t for t in segment k, plus 2 Re(C A_bar^(t+1) x0) in segment 0;
    x_T = sum_s A_bar^(T-1-s) B_bar u_s over the last segment (+ A_bar^T x0 if it is the
    first).
  """
  batch, length, H = u.shape
  power = powers(A_bar, length + 1)  # A_bar^l, l = 0 .. T
  K = kernel(C * B_bar, power[..., :length])
  masks = (jnp.arange(num_segments)[:, None, None] == index[None]).astype(u.dtype)
  y = fft_conv(jnp.einsum("kbt,bth->kbth", masks, u).reshape(-1, length, H), K)
  y = jnp.einsum("kbt,kbth->bth", masks, y.reshape(num_segments, batch, length, H))
  first = (index == 0).astype(u.dtype)
  y = y + first[..., None] * 2 * jnp.einsum("hn,hnt,bhn->bth", C, power[..., 1:], x0).real
  last = index[:, -1]
  u_last = jnp.einsum("bt,bth->bth", (index == last[:, None]).astype(u.dtype), u)
  x_T = (jnp.einsum("b,hn,bhn->bhn", (last == 0).astype(u.dtype), power[..., length], x0)
         + jnp.einsum("hn,hns,bsh->bhn", B_bar, power[..., length - 1::-1], u_last))
  return y, x_T
