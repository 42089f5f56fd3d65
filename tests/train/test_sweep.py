"""train.sweep: a grid of resumable runs, finished ones skipped, one CSV row per run."""
import csv
import json
import os

import pytest

from train import main as train_main
from train import sweep

FRONTIER = "configs/synthetic/mqar_frontier.py"


def _write_sweep(path, runs):
  path.write_text(f"CONFIG = 'configs/synthetic/mqar.py'\n"
                  f"def get_sweep():\n  return {runs!r}\n")
  return str(path)


def test_the_frontier_sweep_names_keys_its_config_has():
  """Every point of the frontier is a distinct run whose overrides are keys of the config (a
  typo would stop each run only when it starts)."""
  config, runs = sweep.load_sweep(FRONTIER)
  assert len(runs) == len({r["name"] for r in runs}) == 27
  for run in runs:
    loaded = train_main.load_config_file(f"{config}:{run['arg']}")
    train_main.check_overrides(loaded, sweep.command(config, run, "w")[6:])
    assert loaded.model.mixer == run["arg"].split("=")[1]


def test_bad_sweep_files_fail_naming_the_problem(tmp_path):
  with pytest.raises(ValueError, match="no sweep file"):
    sweep.load_sweep(str(tmp_path / "missing.py"))
  run = {"name": "a", "arg": "", "overrides": {}}
  with pytest.raises(ValueError, match="repeated: a"):
    sweep.load_sweep(_write_sweep(tmp_path / "twice.py", [run, run]))
  with pytest.raises(ValueError, match="keys name, arg, overrides"):
    sweep.load_sweep(_write_sweep(tmp_path / "keys.py", [{"name": "a"}]))
  with pytest.raises(SystemExit):
    sweep.main([FRONTIER, "--root", str(tmp_path), "--only", "nope"])


def test_a_finished_run_is_skipped_and_an_unfinished_one_is_not(tmp_path):
  """final_eval reads the eval logged at config.json's run.steps; before it, the run is not
  finished (and run_one would launch it)."""
  workdir = tmp_path / "r"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"run": {"steps": 10}}))
  lines = [{"step": 5, "eval_accuracy": 0.3}, {"step": 10, "loss": 1.0}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  assert sweep.final_eval(str(workdir)) is None
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 10, "eval_accuracy": 0.9, "eval_loss": 0.1}) + "\n")
  assert sweep.final_eval(str(workdir))["eval_accuracy"] == 0.9
  assert sweep.run_one("unused.py", {"name": "r", "arg": "", "overrides": {}},
                       str(tmp_path)) == "skipped"


@pytest.mark.slow
def test_two_tiny_points_run_end_to_end_and_a_second_call_skips_them(tmp_path):
  tiny = {"model.d_model": 16, "model.n_layers": 1, "run.steps": 6, "run.eval_every": 3,
          "run.checkpoint_every": 3, "run.batch_size": 4, "run.eval_batches": 1}
  runs = [{"name": f"{m}_d16", "arg": f"model={m}", "overrides": tiny}
          for m in ("attention", "mingru")]
  path = _write_sweep(tmp_path / "tiny.py", runs)
  root = tmp_path / "runs"
  assert sweep.main([path, "--root", str(root), "--workers", "2"]) == 0
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == ["attention_d16", "mingru_d16"]
  for row in rows:
    assert row["status"] == "done" and row["steps"] == "6" and int(row["params"]) > 0
    assert 0 <= float(row["eval_accuracy"]) <= 1 and int(row["state_bytes"]) > 0
  # attention's KV cache holds the whole sequence; minGRU's state is one vector per layer
  assert int(rows[0]["state_bytes"]) > int(rows[1]["state_bytes"])
  mtime = os.path.getmtime(root / "attention_d16" / "metrics.jsonl")
  assert sweep.main([path, "--root", str(root)]) == 0
  assert os.path.getmtime(root / "attention_d16" / "metrics.jsonl") == mtime
  with open(root / "results.csv") as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["skipped", "skipped"]
