"""`impl` resolution: one dispatcher for every op; "auto" follows the platform through one table,
unknown names list the op's forms, every folder has its reference."""
import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from layers import ops
from layers.ops import common


def test_auto_follows_the_platform_table(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert common.resolve_impl("linear_scan", "auto") == "reference"
  assert common.resolve_impl("linear_attention", "auto") == "chunk"
  threshold, long_form = common.LONG_FORMS["attention"]
  assert common.resolve_impl("attention", "auto", length=threshold - 1) == "reference"
  assert common.resolve_impl("attention", "auto", length=threshold) == long_form == "blockwise"
  assert common.resolve_impl("attention", "reference", length=threshold) == "reference"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert common.resolve_impl("linear_scan", "auto") == "associative"
  assert common.resolve_impl("linear_scan", "reference") == "reference"


def test_unknown_impl_lists_the_op_forms():
  with pytest.raises(ValueError, match=r"linear_scan: unknown impl='fast'; expected one of "
                                       r"'reference', 'associative', 'pallas', 'auto'"):
    ops.linear_scan(jnp.ones((1, 2, 1)), jnp.ones((1, 2, 1)), impl="fast")
  x = jnp.ones((1, 2, 1, 2))
  with pytest.raises(ValueError, match=r"gated_delta_rule: unknown impl='fft'; expected one "
                                       r"of 'reference', 'chunk', 'pallas', 'auto'"):
    ops.gated_delta_rule(x, x, x, jnp.ones((1, 2, 1)), impl="fft")


def test_chunk_size_is_checked_whatever_the_form():
  x = jnp.ones((1, 2, 1, 2))
  with pytest.raises(ValueError, match="linear_attention: chunk_size must be a positive int"):
    ops.linear_attention(x, x, x, chunk_size=0, impl="reference")


def test_register_refuses_forms_without_reference_or_with_unknown_names():
  with pytest.raises(ValueError, match="must include 'reference'"):
    common.register("op", {"chunk": lambda: None})
  with pytest.raises(ValueError, match="use names from"):
    common.register("op", {"reference": lambda: None, "fast": lambda: None})
  assert "op" not in common.FORMS


def test_every_registered_op_is_public_and_auto_resolves_to_its_forms():
  assert set(common.FORMS) == set(common.AUTO_FORMS)
  assert set(common.FORMS) <= set(ops.__all__)
  for op, forms in common.FORMS.items():
    for column in ("cpu", "accelerator"):
      assert common.AUTO_FORMS[op][column] in forms, (op, column)
    assert op not in common.LONG_FORMS or common.LONG_FORMS[op][1] in forms, op


@pytest.mark.parametrize("folder", sorted(
    p.parent.name for p in pathlib.Path(ops.__file__).parent.glob("*/__init__.py")))
def test_every_op_folder_has_its_reference(folder):
  importlib.import_module(f"layers.ops.{folder}.reference")
