"""The recall-vs-state frontier (Zoology, Arora et al. 2023; BASED, Arora et al. 2024): MQAR
accuracy against recurrent state size, for attention, sliding window and the fixed-state mixers,
three widths each, every point on one budget (2 layers; 1,500 steps of batch 64; sequences of
128 tokens holding 16 key-value pairs from a 128-token vocabulary).

  python -m train.sweep configs/synthetic/mqar_frontier.py --root runs/frontier --workers 2

runs/frontier/results.csv gets one row per point (model, width, state bytes, parameters, eval
accuracy); running the command again skips finished points and resumes killed ones.
"""
CONFIG = "configs/synthetic/mqar.py"
MODELS = ("attention", "swa", "based", "gated_deltanet", "mamba", "mamba2", "retnet", "s4d",
          "mingru")
WIDTHS = (32, 64, 128)
BUDGET = {
    "model.n_layers": 2,
    "task.vocab_size": 128,   # keys from [1, 64), values from [64, 128)
    "task.num_pairs": 16,
    "task.seq_len": 128,
    "run.steps": 1500,
    "run.batch_size": 64,
    "run.eval_every": 500,
    "run.checkpoint_every": 500,
}


def get_sweep() -> list[dict]:
  """One run per (model, width)."""
  return [{"name": f"{model}_d{width}", "arg": f"model={model}",
           "overrides": {"model.d_model": width, **BUDGET}}
          for model in MODELS for width in WIDTHS]
