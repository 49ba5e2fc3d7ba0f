"""The toy substrate of the diffusion family (issue 18, section 1): data, denoisers, networks, training,
metrics and cached teachers, small enough for the CPU.

- data: :func:`mixture_2d` (2-D Gaussian mixture on a circle), :func:`digits_8x8` (scikit-learn's digits in
  [-1, 1], a fixed stratified train/test split)
- denoisers: :class:`EDMDenoiser` (Karras et al.'s preconditioning), :class:`ConsistencyDenoiser`
  (boundary-condition scalings: ``f(x, sigma_min) = x``)
- networks: :class:`ToyMLP`, :class:`ToyConv8x8`
- training and sampling: :func:`train_denoiser` (EDM loss, label dropout for CFG), :func:`edm_sample`
- the classifier: :class:`DigitsClassifier`, :func:`classifier_reward` (log p(y|x))
- metrics: :func:`energy_distance`, :func:`mode_recall`, :func:`feature_frechet`
- teachers: :func:`load_teacher` (``"mixture"``, ``"digits"``, ``"classifier"``)

The substrate is infrastructure for the family's methods and studies, not a method: it registers nothing.
"""
from __future__ import annotations

from gradwise.diffusion.toy.classifier import DigitsClassifier, classifier_reward, train_digits_classifier
from gradwise.diffusion.toy.data import (DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, digits_8x8, mixture_2d,
                                         mixture_2d_centers, mixture_2d_weights)
from gradwise.diffusion.toy.denoisers import ConsistencyDenoiser, EDMDenoiser
from gradwise.diffusion.toy.metrics import MODE_RECALL_FRACTION, energy_distance, feature_frechet, mode_recall
from gradwise.diffusion.toy.nets import NoiseLabelEmbedding, ToyConv8x8, ToyMLP
from gradwise.diffusion.toy.teachers import (MIXTURE_TEACHER_WEIGHTS, TEACHER_FILE, TEACHERS, build_teacher,
                                             load_teacher, train_teacher)
from gradwise.diffusion.toy.training import edm_sample, edm_sigmas, train_denoiser

__all__ = ["mixture_2d", "mixture_2d_centers", "mixture_2d_weights", "digits_8x8", "DIGITS_TEST_FRACTION",
           "DIGITS_SPLIT_SEED", "EDMDenoiser", "ConsistencyDenoiser", "ToyMLP", "ToyConv8x8",
           "NoiseLabelEmbedding", "train_denoiser", "edm_sample", "edm_sigmas", "DigitsClassifier",
           "train_digits_classifier", "classifier_reward", "energy_distance", "mode_recall", "feature_frechet",
           "MODE_RECALL_FRACTION", "TEACHERS", "MIXTURE_TEACHER_WEIGHTS", "TEACHER_FILE", "build_teacher",
           "train_teacher", "load_teacher"]
