"""Tiny Gated DeltaNet and BASED models learn MQAR through the training loop, far above what a
model without mixing reaches (< 0.3, see test_loop)."""
import ml_collections
import pytest

from tests.train.test_loop import _mqar_config
from train.loop import train_and_evaluate


@pytest.mark.slow
@pytest.mark.parametrize("model, mixer_kwargs", [
    ("gated_deltanet", {}),  # the chunk form ("auto" on CPU)
    ("based", {}),  # at the tiny size (2 layers): BaseConv + Taylor linear attention
])
def test_linear_attention_learns_mqar(tmp_path, model, mixer_kwargs):
  config = _mqar_config(model)
  config.model.mixer_kwargs = ml_collections.ConfigDict(mixer_kwargs)
  result = train_and_evaluate(config, str(tmp_path))
  assert result["eval_accuracy"] > 0.6, result
