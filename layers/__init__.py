"""Sequence layers: Flax linen modules over the pure-JAX ops in `layers.ops`."""
