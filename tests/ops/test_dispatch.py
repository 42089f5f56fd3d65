"""`impl` resolution: "auto" follows the platform, unknown names list the known forms."""
import jax
import pytest

from layers.ops import _common


def test_auto_picks_the_platform_default(monkeypatch):
  forms = ("reference", "associative")
  assert jax.default_backend() == "cpu"
  assert _common.resolve_impl("op", "auto", forms, cpu_default="reference",
                              accelerator_default="associative") == "reference"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _common.resolve_impl("op", "auto", forms, cpu_default="reference",
                              accelerator_default="associative") == "associative"
  assert _common.resolve_impl("op", "auto", forms, cpu_default="reference") == "reference"
  assert _common.resolve_impl("op", "associative", forms, cpu_default="reference") == "associative"


def test_unknown_impl_lists_the_forms():
  with pytest.raises(ValueError, match=r"op: unknown impl='fast'; expected one of "
                                       r"'reference', 'associative', 'auto'"):
    _common.resolve_impl("op", "fast", ("reference", "associative"), cpu_default="reference")
