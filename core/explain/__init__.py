"""Explainers: what a model sees inside: feature maps and filters (featuremaps), Grad-CAM (cam), and
the predictions gallery on a split (gallery).

Imports core.training, core.inference, core.data, core.models and core.util.
"""
