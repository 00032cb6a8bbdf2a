"""Evaluation: objective metrics and traditional baseline codecs run for real."""

from cq_codec.evaluation.baselines import BaselineUnavailableError, get_baseline
from cq_codec.evaluation.metrics import measured_kbps, score, score_many

__all__ = ["BaselineUnavailableError", "get_baseline", "measured_kbps", "score", "score_many"]
