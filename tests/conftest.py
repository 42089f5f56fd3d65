"""Test-wide numerics: float64 available (the oracles run in it), no silent rank promotion."""
import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
