"""Multi-head softmax attention with rotary positions: the Transformer baseline."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from layers import axes, common
from layers.ops import attention, attention_prefill, attention_step, init_cache
from layers.ops import common as ops_common
from layers.rotary import apply_rotary


class Attention(nn.Module):
  """o_t = W_o concat_h softmax_s(q_t.k_s / sqrt(K)) v_s with [q | k | v] = x W_qkv (no biases),
  rotary on q and k at the position within the segment (t minus the start of its segment).

  Causal: s <= t in t's segment, t - s < window when window is given. The state is the KV cache
  {k: [B, C, H, K], v: [B, C, H, V], pos: [B]} of `layers.ops.attention_step` (keys stored
  after rotary), C = window for sliding-window attention, else max_len (full attention while
  pos < C). A token at cache position pos sees pos - C + 1 .. pos, so with a state the whole-
  sequence form uses the window C too, exactly as the steps would. The returned cache holds
  the last segment of each row only (as if run alone), pos = its length so far.

  causal=False is the bidirectional form (classifiers): every token sees its whole segment; it
  takes no state, returns None for it and has no step.
  """
  d_model: int
  num_heads: int
  head_dim: int
  window: int | None = None
  causal: bool = True
  rotary_base: float = 10000.0
  impl: str = "auto"  # the attention op's form: "reference" | "blockwise" | "auto"
  chunk_size: int | None = None  # the blockwise form's block (None: the op's default)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.window is not None and self.window < 1:
      raise ValueError(f"Attention: window must be a positive int or None; got {self.window}")
    self.qkv_proj = nn.DenseGeneral(
        (3, self.num_heads, self.head_dim), use_bias=False,
        kernel_init=axes.kernel(axes.EMBED, None, axes.HEADS, axes.HEAD_DIM), dtype=self.dtype,
        param_dtype=self.param_dtype)
    self.out_proj = nn.DenseGeneral(
        self.d_model, axis=(-2, -1), use_bias=False,
        kernel_init=axes.kernel(axes.HEADS, axes.HEAD_DIM, axes.EMBED), dtype=self.dtype,
        param_dtype=self.param_dtype)

  def _qkv(self, x: jax.Array, positions: jax.Array):
    """x: [..., D], positions: [...] -> q, k, v: [..., H, K], rotary applied to q and k."""
    q, k, v = jnp.moveaxis(self.qkv_proj(x.astype(self.dtype)), -3, 0)
    return (apply_rotary(q, positions, self.rotary_base),
            apply_rotary(k, positions, self.rotary_base), v)

  def __call__(self, x: jax.Array, state: dict | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
    """x: [B, T, D] -> (y: [B, T, D], KV cache after the last token).

    state=None starts from an empty cache of capacity C = window (or T); a given cache is
    continued by its row's first segment (later segments start empty), `attention_prefill`.
    Full attention (no window) raises a ValueError when T exceeds the cache's capacity C: the
    shapes show that the tokens would not fit. (Where only the traced position decides,
    pos + T > C or stepping at pos >= C, the cache acts as a sliding window of C tokens:
    size it with init_state(B, max_len) for every position to be decoded, as `generate` does.)
    """
    common.check_input("Attention", x, self.d_model)
    B, T, _ = x.shape
    index, positions = ops_common.segment_positions(segment_ids, B, T)
    if not self.causal:
      if state is not None:
        raise ValueError("Attention: the bidirectional form (causal=False) takes no state")
      q, k, v = self._qkv(x, positions)
      o = attention(q, k, v, window=None, segment_ids=index, causal=False, impl=self.impl,
                    chunk_size=self.chunk_size)
      return self.out_proj(o), None
    if state is not None:  # the first segment continues at the cache's next position
      capacity = state["k"].shape[1]
      if self.window is None and T > capacity:
        raise ValueError(f"Attention: {T} tokens do not fit a full-attention KV cache of "
                         f"capacity {capacity}; size it with init_state(batch, max_len >= "
                         "all positions to be decoded)")
      positions = positions + jnp.where(index == 0, state["pos"][:, None], 0)
    q, k, v = self._qkv(x, positions)
    capacity = (self.window or T) if state is None else None
    o, cache = attention_prefill(q, k, v, state, capacity=capacity, segment_ids=index,
                                 impl=self.impl, chunk_size=self.chunk_size)
    return self.out_proj(o), cache

  def init_state(self, batch_size: int, max_len: int) -> dict:
    """An empty KV cache of capacity C = window (sliding) or max_len (full)."""
    return init_cache(batch_size, self.window or max_len, self.num_heads, self.head_dim,
                      self.head_dim, self.dtype)

  def step(self, x_t: jax.Array, state: dict) -> tuple[jax.Array, dict]:
    """x_t: [B, D] -> (y_t: [B, D], cache with (k_t, v_t) written at pos, pos + 1).

    pos is traced, so nothing checks it: at pos >= C full attention sees the last C tokens only
    (a sliding window); init_state(B, max_len) must cover every position to be decoded."""
    common.check_input("Attention", x_t, self.d_model, step=True)
    if not self.causal:
      raise ValueError("Attention: the bidirectional form (causal=False) has no step")
    q, k, v = self._qkv(x_t, state["pos"])
    o, state = attention_step(q, k, v, state)
    return self.out_proj(o), state
