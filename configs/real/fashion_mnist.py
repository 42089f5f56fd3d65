"""Sequential Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale pixels as 784 tokens in raster
order (or a fixed permutation: permuted=True), 10 classes; LRA Image's stand-in. Fetch the
IDX files once with `python -m train.data.fetch fashion_mnist`.

  python -m train --config configs/real/fashion_mnist.py:model=s4d,size=cpu \\
      --workdir runs/fashion_mnist_s4d
  python -m train --config configs/real/fashion_mnist.py:permuted=True --workdir runs/pfmnist

eval and test are both the t10k set (there is no validation set, as LRA Image);
`python -m train.report` scores the whole of it.
"""
import ml_collections

from train import config_lib

TRAIN_SIZE = 60_000

SIZES = {
    # "cpu": a 2-layer width-64 model, short enough for a shared 2-core CPU (6,400 images seen)
    "cpu": dict(d_model=64, n_layers=2, mixer_kwargs={"s4d": {"d_state": 32}}, lr=0.004,
                ssm_lr=0.001, weight_decay=0.05, batch_size=16, steps=400, eval_every=200,
                eval_batches=8),
    # LRA Image's "full" setting of the S4D paper, on these 60k images (200 epochs)
    "full": dict(d_model=512, n_layers=6, mixer_kwargs={"s4d": {"d_state": 64}}, lr=0.01,
                 ssm_lr=0.001, weight_decay=0.05, batch_size=50,
                 steps=200 * TRAIN_SIZE // 50, eval_every=TRAIN_SIZE // 50, eval_batches=200),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return config_lib.lra_config(arg, dict(
      name="fashion_mnist",
      data_dir="",       # "": ~/.cache/seqmodels/fashion_mnist
      permuted=False,    # pixels in train.tasks.real.FashionMNIST.permutation() order
      seed=0,
  ), SIZES, task_args=("permuted", "seed"))
