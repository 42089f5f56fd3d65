"""Pure-JAX sequence ops, one folder per recurrence, each with several forms and one oracle.

Every op applies one input rule (`common.as_float`), checks its inputs, resolves `impl` through
one dispatcher (`common.dispatch`: "reference" is the sequential oracle; "auto" picks the
fastest form for the platform from `common.AUTO_FORMS`) and calls the form. See DESIGN.md for
the conventions.
"""
from layers.ops.attention import attention, attention_prefill, attention_step, init_cache
from layers.ops.gated_delta_rule import gated_delta_rule
from layers.ops.linear_attention import linear_attention
from layers.ops.linear_scan import linear_scan, log_linear_scan
from layers.ops.product_keys import memory_lookup, product_key_topk
from layers.ops.s4d import causal_conv, s4d_conv, s4d_discretize, s4d_kernel
from layers.ops.selective_scan import selective_scan

__all__ = [
    "attention",
    "attention_prefill",
    "attention_step",
    "causal_conv",
    "gated_delta_rule",
    "init_cache",
    "linear_attention",
    "linear_scan",
    "log_linear_scan",
    "memory_lookup",
    "product_key_topk",
    "s4d_conv",
    "s4d_discretize",
    "s4d_kernel",
    "selective_scan",
]
