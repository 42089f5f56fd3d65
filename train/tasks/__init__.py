"""Tasks by name: each builds its grain datasets and declares its loss and metrics."""
from train.tasks.base import GeneratedTask, Task
from train.tasks.lra import Image, ListOps, Pathfinder, Retrieval, Text
from train.tasks.real import UCR, FashionMNIST, SpamAssassin
from train.tasks.synthetic import Facts, InductionHeads, MQAR, SelectiveCopying
from train.tasks.text import CharLM

TASKS: dict[str, type[Task]] = {
    "mqar": MQAR,
    "selective_copying": SelectiveCopying,
    "induction_heads": InductionHeads,
    "facts": Facts,
    "chars": CharLM,
    "listops": ListOps,
    "text": Text,
    "retrieval": Retrieval,
    "image": Image,
    "pathfinder": Pathfinder,  # Path-X: resolution=128
    "fashion_mnist": FashionMNIST,
    "ucr": UCR,
    "spam_assassin": SpamAssassin,
}


def build_task(config) -> Task:
  """The task `config.name` with the rest of `config` as its options."""
  name = config.name
  if name not in TASKS:
    raise ValueError(f"task.name: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
  options = {k: v for k, v in config.items() if k != "name"}
  return TASKS[name](**options)


__all__ = ["TASKS", "GeneratedTask", "Task", "build_task"]
