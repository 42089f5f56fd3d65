"""Architectures assembled from `layers`: backbone, language model, classifier, generation."""
