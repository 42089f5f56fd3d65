"""Simple baselines on exactly the splits and inputs a task trains and tests on (its own
`records`), for the results table (`python -m train.report`):

- majority: the test accuracy of always answering the most frequent training class;
- UCR: 1-nearest-neighbour with Euclidean distance on the z-normalised series;
- Fashion-MNIST: a linear classifier (multinomial logistic regression) on the flattened
  pixels / 255;
- SpamAssassin: bag-of-bytes logistic regression (the frequency of each byte value in the
  same first max_length bytes, standardised).

  python -m train.baselines configs/real/ucr.py:problem=GunPoint [configs/real/spam.py ...]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train.tasks import build_task
from train.tasks.real import UCR, FashionMNIST, SpamAssassin


def majority_rate(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
  """Fraction of test labels equal to the most frequent training label (ties: the lowest)."""
  return float(np.mean(test_labels == np.bincount(train_labels).argmax()))


def nearest_neighbour(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray
                      ) -> np.ndarray:
  """1-NN labels of x_test [M, ...] among x_train [N, ...] (same shape per example) under
  the Euclidean distance ||x - x_n||^2 = ||x||^2 - 2 x.x_n + ||x_n||^2."""
  a, b = x_test.reshape(len(x_test), -1), x_train.reshape(len(x_train), -1)
  d2 = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None]
  return y_train[np.argmin(d2, axis=1)]


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_softmax_regression(x, y, num_classes: int, steps: int, lr: float, l2: float):
  def loss(params):
    logits = x @ params["w"] + params["b"][None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + l2 * (params["w"] ** 2).sum()
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  tx = optax.adam(lr)

  def step(carry, _):
    params, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


def softmax_regression(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                       num_classes: int, steps: int = 500, lr: float = 0.05,
                       l2: float = 1e-5) -> np.ndarray:
  """Predicted labels of x_test [M, F] by multinomial logistic regression p(y|x) =
  softmax(x W + b) fitted on (x_train [N, F], y_train [N]): full-batch Adam on the mean
  cross-entropy + l2 ||W||^2, features standardised with the training mean and spread."""
  mean, std = x_train.mean(0, keepdims=True), x_train.std(0, keepdims=True) + 1e-6
  params = _fit_softmax_regression(jnp.asarray((x_train - mean) / std, jnp.float32),
                                   jnp.asarray(y_train), num_classes, steps, lr, l2)
  logits = jnp.asarray((x_test - mean) / std, jnp.float32) @ params["w"] + params["b"][None]
  return np.asarray(jnp.argmax(logits, -1))


def byte_frequencies(tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
  """Bag of bytes: [N, L] byte tokens (b + 1, 0 pads) -> [N, 256] frequency of each byte
  value among the real tokens."""
  counts = np.stack([np.bincount(t[s > 0] - 1, minlength=256)
                     for t, s in zip(tokens, segment_ids)])
  return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def _arrays(task, split: str) -> dict:
  """The task's encoded examples of `split` stacked: {inputs, targets, ...}."""
  examples = [task.encode(r) for r in task.records(split)]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def baselines(task) -> dict[str, float]:
  """{baseline name: test accuracy} for a real-data task (train/tasks/real.py)."""
  train, test = _arrays(task, "train"), _arrays(task, "test")
  y_train, y_test = train["targets"], test["targets"]
  result = {"majority": majority_rate(y_train, y_test)}
  if isinstance(task, UCR):
    predicted = nearest_neighbour(train["inputs"], y_train, test["inputs"])
    result["1-NN Euclidean"] = float(np.mean(predicted == y_test))
  elif isinstance(task, FashionMNIST):
    predicted = softmax_regression(train["inputs"] / 255.0, y_train, test["inputs"] / 255.0,
                                   task.num_classes)
    result["linear (pixels)"] = float(np.mean(predicted == y_test))
  elif isinstance(task, SpamAssassin):
    predicted = softmax_regression(byte_frequencies(train["inputs"], train["segment_ids"]),
                                   y_train,
                                   byte_frequencies(test["inputs"], test["segment_ids"]),
                                   task.num_classes)
    result["bag-of-bytes logistic"] = float(np.mean(predicted == y_test))
  else:
    raise ValueError(f"no baselines for task {type(task).__name__}; expected one of "
                     "UCR, FashionMNIST, SpamAssassin")
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("configs", nargs="+", help="config file[:args] of a real-data task")
  args = parser.parse_args(argv)
  from train.main import load_config_file  # noqa: PLC0415 (absl flags only when run)
  try:
    for spec in args.configs:
      print(spec, json.dumps(baselines(build_task(load_config_file(spec).task))))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
