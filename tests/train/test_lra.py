"""Long Range Arena: the ListOps generator draws the benchmark's distribution with correct
labels; every loader reads fixture files written here in exactly the release's formats;
missing data names the expected layout; the two-tower classifier; a few training steps of
every configs/lra config."""
import csv
import os
import pickle
import re
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image as PILImage

from seqmodels import Backbone, Classifier
from train.data import listops
from train.data.lra import MissingDataError
from train.loop import train_and_evaluate
from train.tasks import Image, ListOps, Pathfinder, Retrieval, Text
from tests import harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN_IDS = {t: i + 1 for i, t in enumerate(
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "]"])}


# ListOps: an evaluator written apart from the generator's ---------------------------------

def _evaluate(tokens):
  """Value of a parenthesis-free ListOps token list, with an explicit stack."""
  stack = [[]]
  for t in tokens:
    if t.startswith("["):
      stack.append([t])
    elif t == "]":
      op, *args = stack.pop()
      s = sorted(args)
      stack[-1].append({"[MIN": s[0], "[MAX": s[-1], "[SM": sum(s) % 10,
                        "[MED": (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2}[op])
    else:
      stack[-1].append(int(t))
  (result,) = stack[0]
  return result


def _binary_leaves(source):
  """Leaves, in order, of a source that must be nested `( left right )` pairs throughout."""
  words, pos = source.split(), 0
  def node():
    nonlocal pos
    word = words[pos]
    pos += 1
    if word != "(":
      return [word]
    left, right = node(), node()
    assert words[pos] == ")", f"a node with more than two children at word {pos}"
    pos += 1
    return left + right
  leaves = node()
  assert pos == len(words)
  return leaves


def _check_rows(rows):
  for source, label in rows:
    tokens = _binary_leaves(source)
    assert MIN_LEN < len(tokens) < MAX_LEN
    assert tokens == [t for t in source.split() if t not in "()"]
    assert _evaluate(tokens) == label, source


MIN_LEN, MAX_LEN = 500, 2000


def test_listops_renders_as_the_release():
  tree = ("[MAX", [2, 9])
  assert listops.render(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
  nested = ("[SM", [("[MED", [3, 8, 1, 6]), 7])
  assert listops.render(nested) == "( ( ( [SM ( ( ( ( ( [MED 3 ) 8 ) 1 ) 6 ) ] ) ) 7 ) ] )"
  assert listops.value(nested) == (4 + 7) % 10 and _evaluate(listops.tokens(nested)) == 1


def test_listops_generator_labels_lengths_and_splits():
  splits = listops.generate({"train": 40, "val": 8, "test": 8}, seed=0)
  assert [len(rows) for rows in splits.values()] == [40, 8, 8]
  rows = [row for split in splits.values() for row in split]
  _check_rows(rows)
  assert len({source for source, _ in rows}) == len(rows)  # no duplicates, splits disjoint
  assert len({label for _, label in rows}) >= 5


@pytest.mark.slow
def test_listops_generator_histograms():
  """2000 expressions: root operators uniform (chi-square), lengths spread over the range,
  every label present; MAX-rooted values are high, MIN-rooted low."""
  rows = listops.generate({"train": 2000}, seed=1)["train"]
  _check_rows(rows)
  lengths = np.array([sum(t not in "()" for t in s.split()) for s, _ in rows])
  assert 700 < np.median(lengths) < 1400 and lengths.min() < 600 and lengths.max() > 1800
  roots = [next(t for t in s.split() if t != "(") for s, _ in rows]
  counts = Counter(roots)
  chi2 = sum((counts[op] - 500) ** 2 / 500 for op in listops.OPERATORS)
  assert chi2 < 16.3, counts  # p = 0.001 at 3 degrees of freedom
  labels = Counter(label for _, label in rows)
  assert set(labels) == set(range(10))
  by_root = lambda op: np.array([label for r, (_, label) in zip(roots, rows) if r == op])
  assert by_root("[MAX").mean() > 8 and by_root("[MIN").mean() < 1


def test_listops_files_round_trip_and_are_deterministic(tmp_path):
  sizes = dict(train=6, val=3, test=3)
  listops.main(["--out", str(tmp_path / "a"), "--seed", "3", "--train", "6", "--val", "3",
                "--test", "3"])
  listops.write(str(tmp_path / "b"), sizes, seed=3)
  listops.write(str(tmp_path / "c"), sizes, seed=4)
  for name in listops.SPLIT_FILES.values():
    a = (tmp_path / "a" / name).read_bytes()
    assert a == (tmp_path / "b" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert a.startswith(b"Source\tTarget\r\n")  # csv's default line ending, as the release
  with open(tmp_path / "a" / "basic_val.tsv", newline="") as f:
    rows = [(s, int(t)) for s, t in list(csv.reader(f, delimiter="\t"))[1:]]
  batch = ListOps(data_dir=str(tmp_path / "a")).dataset("eval", 3)[0]
  for (source, label), x, s, y in zip(rows, batch["inputs"], batch["segment_ids"],
                                      batch["targets"]):
    ids = [TOKEN_IDS[t] for t in source.split() if t not in "()"]
    assert y == label and s.sum() == len(ids) and (s[:len(ids)] == 1).all()
    np.testing.assert_array_equal(x, np.pad(ids, (0, 2048 - len(ids))))


def test_listops_generated_examples_follow_the_index():
  task = ListOps(seed=5, max_length=2048)
  a, b = task.dataset("train", 2)[1], task.dataset("train", 2)[1]
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], task.dataset("eval", 2)[1]["inputs"])
  names = {v: k for k, v in TOKEN_IDS.items()}
  for x, s, y in zip(a["inputs"], a["segment_ids"], a["targets"]):
    tokens = [names[i] for i in x[s == 1]]
    assert MIN_LEN < len(tokens) < MAX_LEN and (x[s == 0] == 0).all()
    assert _evaluate(tokens) == y


def test_listops_easier_expressions_nest_at_most_max_depth_minus_one():
  """max_depth=3, min_length=3 (the diagnostic of configs/lra/listops.py): every expression
  is an operator, operators nest at most two deep, labels are the values; both options
  reach the task from the config; the release's files take neither."""
  from configs.lra import listops as listops_config
  task_config = listops_config.get_config("size=cpu,max_depth=3,min_length=3").task
  assert (task_config.max_depth, task_config.min_length) == (3, 3)
  task = ListOps(max_depth=3, min_length=3)
  names = {v: k for k, v in TOKEN_IDS.items()}
  depths = []
  for x, s, y in zip(*(task.dataset("train", 64)[0][k]
                       for k in ("inputs", "segment_ids", "targets"))):
    tokens = [names[i] for i in x[s == 1]]
    nesting = np.cumsum([t.startswith("[") - (t == "]") for t in tokens])
    depths.append(nesting.max())
    assert len(tokens) > 3 and tokens[0].startswith("[") and _evaluate(tokens) == y
  assert max(depths) == 2
  with pytest.raises(ValueError, match="generated examples only"):
    ListOps(data_dir="somewhere", max_depth=3)


# Fixture files in the release formats ------------------------------------------------------

LISTOPS_TSV = ("Source\tTarget\r\n"
               "( ( ( [MAX 2 ) 9 ) ] )\t9\r\n"
               "( ( ( [SM ( ( ( [MIN 4 ) 1 ) ] ) ) 7 ) ] )\t8\r\n")
RGB = np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
PATHFINDER_LABELS = [1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0]


def _pixels(resolution, k):
  return np.random.default_rng([resolution, k]).integers(0, 256, (resolution,) * 2,
                                                         dtype=np.uint8)


def _write_release(root):
  """The LRA release's files, a few examples each, as its formats define them."""
  for split in ("train", "val", "test"):
    (root / f"basic_{split}.tsv").write_text(LISTOPS_TSV, newline="")
  for split, texts in (("train", {"neg": ["Bad.", "Dull <br /><br />film."],
                                  "pos": ["Great film \xe9!", "Loved it."]}),
                       ("test", {"neg": ["No.", "Awful"], "pos": ["Yes!", "Fine."]})):
    for sentiment, reviews in texts.items():
      folder = root / "aclImdb" / split / sentiment
      folder.mkdir(parents=True)
      for i, review in enumerate(reviews):
        (folder / f"{i}_{7 if sentiment == 'pos' else 2}.txt").write_bytes(review.encode())
  for split in ("train", "eval", "test"):
    with open(root / f"new_aan_pairs.{split}.tsv", "w", newline="", encoding="utf-8") as f:
      f.write("1\tP00-1001\tW05-0904\tparsing \"quoted\" text\tsecond paper\n"
              "0\tJ93-2004\tC04-1010\tunrelated\tother doc\xe9\n"
              "1\tA00-1031\tP02-1040\tthird\tpair\n")
  cifar = root / "cifar-10-batches-py"
  cifar.mkdir()
  data = RGB.reshape(12, 3072)
  for k, (name, rows) in enumerate([(f"data_batch_{i}", [i - 1]) for i in range(1, 6)]
                                   + [("test_batch", list(range(5, 12)))]):
    with open(cifar / name, "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"labels": [r % 10 for r in rows],
                   b"data": data[rows], b"filenames": [b"x.png"] * len(rows)}, f, protocol=2)
  for resolution in (32, 128):
    folder = root / f"pathfinder{resolution}" / "curv_contour_length_14"
    (folder / "metadata").mkdir(parents=True)
    for m in range(2):
      (folder / "imgs" / str(m)).mkdir(parents=True)
      lines = []
      for i in range(10):
        k = 10 * m + i
        PILImage.fromarray(_pixels(resolution, k)).save(
            folder / "imgs" / str(m) / f"sample_{i}.png")
        lines.append(f"imgs/{m} sample_{i}.png {i} {PATHFINDER_LABELS[k]} 14 1.5 7\n")
      (folder / "metadata" / f"{m}.npy").write_text("".join(lines))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp("lra_release")
  _write_release(root)
  return str(root)


def test_listops_reads_the_release_tsv(release):
  batch = ListOps(data_dir=release, max_length=16).dataset("test", 2)[0]
  ids = [[TOKEN_IDS[t] for t in "[MAX 2 9 ]".split()],
         [TOKEN_IDS[t] for t in "[SM [MIN 4 1 ] 7 ]".split()]]
  np.testing.assert_array_equal(batch["inputs"], [np.pad(i, (0, 16 - len(i))) for i in ids])
  np.testing.assert_array_equal(batch["segment_ids"].sum(1), [4, 7])
  np.testing.assert_array_equal(batch["targets"], [9, 8])


def test_text_reads_bytes_of_the_reviews(release):
  batch = Text(data_dir=release, max_length=8).dataset("eval", 4)[0]
  expected = [b"No.", b"Awful", b"Yes!", b"Fine."]  # neg then pos, files in name order
  for x, s, text in zip(batch["inputs"], batch["segment_ids"], expected):
    np.testing.assert_array_equal(x[:len(text)], np.frombuffer(text, np.uint8) + 1)
    assert s.sum() == len(text) and (x[len(text):] == 0).all()
  np.testing.assert_array_equal(batch["targets"], [0, 0, 1, 1])
  train = Text(data_dir=release, max_length=8).dataset("train", 4)[0]
  assert sorted(train["targets"]) == [0, 0, 1, 1]
  assert train["segment_ids"].sum(1).max() == 8  # "Dull <br /><br />film." cut at 8 bytes


def test_train_split_is_shuffled_each_epoch(release):
  task = Text(data_dir=release, max_length=32, seed=1)
  first, second = (task.dataset("train", 4)[j]["inputs"] for j in (0, 1))
  key = lambda batch: sorted(map(bytes, batch.astype(np.uint8)))
  assert key(first) == key(second)  # the same 4 reviews, each epoch
  assert not np.array_equal(first, second)  # in a new order


def test_retrieval_reads_pairs_into_two_towers(release):
  batch = Retrieval(data_dir=release, max_length=12).dataset("eval", 3)[0]
  assert batch["inputs"].shape == batch["segment_ids"].shape == (3, 2, 12)
  np.testing.assert_array_equal(batch["targets"], [1, 0, 1])
  np.testing.assert_array_equal(batch["inputs"][0, 0], np.frombuffer(b'parsing "quo', np.uint8)
                                + 1)  # quotes are text; cut at 12 bytes
  other = "other doc\xe9".encode()
  np.testing.assert_array_equal(batch["inputs"][1, 1, :len(other)],
                                np.frombuffer(other, np.uint8) + 1)
  np.testing.assert_array_equal(batch["segment_ids"][1].sum(1), [9, len(other)])


def test_image_is_cifar_in_grayscale(release):
  batch = Image(data_dir=release).dataset("eval", 7)[0]
  rgb = RGB[5:12].transpose(0, 2, 3, 1).astype(np.float64)
  gray = np.rint(0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2])
  np.testing.assert_array_equal(batch["inputs"], gray.reshape(7, 1024))
  np.testing.assert_array_equal(batch["targets"], [5, 6, 7, 8, 9, 0, 1])
  assert "segment_ids" not in batch
  train = Image(data_dir=release).dataset("train", 5)[0]
  assert sorted(train["targets"]) == [0, 1, 2, 3, 4]


def test_pathfinder_reads_metadata_and_pngs(release):
  task = Pathfinder(data_dir=release)
  batch = task.dataset("eval", 2)[0]  # examples 16, 17 of 20 (80% / 10% / 10%)
  np.testing.assert_array_equal(batch["inputs"], [_pixels(32, k).ravel() for k in (16, 17)])
  np.testing.assert_array_equal(batch["targets"], PATHFINDER_LABELS[16:18])
  np.testing.assert_array_equal(task.dataset("test", 2)[0]["targets"], PATHFINDER_LABELS[18:])
  train = task.dataset("train", 16)[0]
  assert sorted(train["targets"]) == sorted(PATHFINDER_LABELS[:16])
  pathx = Pathfinder(data_dir=release, resolution=128).dataset("eval", 2)[0]
  np.testing.assert_array_equal(pathx["inputs"], [_pixels(128, k).ravel() for k in (16, 17)])


@pytest.mark.parametrize("task, missing", [
    (ListOps, "basic_val.tsv"),
    (Text, "aclImdb/test"),
    (Retrieval, "new_aan_pairs.eval.tsv"),
    (Image, "cifar-10-batches-py/test_batch"),
    (Pathfinder, "pathfinder32/curv_contour_length_14"),
])
def test_missing_data_names_the_expected_layout(tmp_path, task, missing):
  with pytest.raises(MissingDataError) as error:
    task(data_dir=str(tmp_path)).dataset("eval", 2)
  message = str(error.value)
  assert os.path.join(str(tmp_path), missing) in message and task.LAYOUT in message
  assert isinstance(error.value, ValueError) and isinstance(error.value, FileNotFoundError)
  if task is not ListOps:  # which generates its examples without data_dir
    with pytest.raises(MissingDataError, match="task.data_dir is not set; expected "
                       + re.escape(task.LAYOUT)):
      task().dataset("train", 2)


def test_empty_folders_and_bad_rows_are_named(tmp_path):
  (tmp_path / "aclImdb" / "test" / "neg").mkdir(parents=True)
  with pytest.raises(MissingDataError, match=r"no reviews in .*aclImdb/test/neg"):
    Text(data_dir=str(tmp_path)).dataset("eval", 2)
  (tmp_path / "basic_val.tsv").write_text("Source\tTarget\n( [FOO 1 )\t1\n")
  with pytest.raises(ValueError, match=r"basic_val.tsv:2: unknown token '\[FOO'"):
    ListOps(data_dir=str(tmp_path)).dataset("eval", 1)
  with pytest.raises(ValueError, match=r"the eval split has 1 examples, fewer than the 4"):
    (tmp_path / "basic_val.tsv").write_text("Source\tTarget\n( [MIN 1 ) ]\t1\n")
    ListOps(data_dir=str(tmp_path)).dataset("eval", 2, 4)


# The two-tower classifier ------------------------------------------------------------------

def test_two_tower_combines_pooled_towers_and_ignores_padding():
  backbone = Backbone(d_model=8, n_layers=1, pattern="attention", vocab_size=11,
                      causal=False, dtype=jnp.float64, param_dtype=jnp.float64)
  model = Classifier(backbone, num_classes=3, two_tower=True)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(1, 11, (2, 2, 9)), jnp.int32)
  segment_ids = jnp.asarray(np.arange(9) < np.array([[[9], [4]], [[6], [7]]]), jnp.int32)
  variables = harness.init_variables(model, jax.random.key(0), inputs, segment_ids)

  @jax.jit
  def run(variables):
    pool = lambda x, s: model.apply(variables, x, s, method=Classifier._pool)
    towers = [pool(inputs[:, k], segment_ids[:, k]) for k in range(2)]
    repadded = jnp.where(segment_ids == 0, 7, inputs)
    return (model.apply(variables, inputs, segment_ids), towers,
            model.apply(variables, repadded, segment_ids))

  logits, (h1, h2), repadded_logits = run(variables)
  assert logits.shape == (2, 3)
  head = variables["params"]["head"]
  dense = lambda x, p: x @ p["kernel"] + p["bias"][None]
  x = jnp.concatenate([h1, h2, h1 * h2, h1 - h2], -1)
  x = jax.nn.relu(dense(jax.nn.relu(dense(x, head["layers_0"])), head["layers_2"]))
  harness.assert_close(logits, dense(x, head["layers_4"]), 1e-12, "two-tower head")
  harness.assert_close(repadded_logits, logits, 1e-12, "padding changes nothing")


# Every configs/lra config trains a few steps -----------------------------------------------

@pytest.mark.parametrize("name", ["listops", "retrieval",
                                  *(pytest.param(name, marks=pytest.mark.slow)
                                    for name in ("text", "image", "pathfinder", "pathx"))])
def test_lra_configs_train_a_few_steps(tmp_path, release, name):
  sys.path.insert(0, ROOT)
  import importlib  # noqa: PLC0415
  config = importlib.import_module(f"configs.lra.{name}").get_config("model=s4d,size=cpu")
  if name != "listops":  # ListOps generates its examples
    config.task.data_dir = release
  config.model.update(d_model=8, n_layers=1)
  config.model.mixer_kwargs.s4d.d_state = 4
  config.run.update(steps=2, batch_size=2, eval_batches=1, log_every=1, eval_every=2,
                    checkpoint_every=2, progress=False)
  metrics = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["eval_loss"]) and 0 <= metrics["eval_accuracy"] <= 1
