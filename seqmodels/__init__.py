"""Architectures assembled from `layers`: backbone, language model, classifier, generation,
and the registry of mixers / block patterns / architectures by name."""
from seqmodels import registry
from seqmodels.backbone import Backbone, Block
from seqmodels.block_transformer import BlockTransformer
from seqmodels.generate import generate
from seqmodels.models import (ARCHITECTURES, Classifier, LanguageModel, TaskFacts,
                              build_model)
from seqmodels.sampling import GREEDY, Sampler

__all__ = [
    "ARCHITECTURES",
    "GREEDY",
    "Backbone",
    "Block",
    "BlockTransformer",
    "Classifier",
    "LanguageModel",
    "Sampler",
    "TaskFacts",
    "build_model",
    "generate",
    "registry",
]
