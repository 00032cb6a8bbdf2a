"""Evaluation: objective metrics and traditional baseline codecs run for real."""

from cq_codec.evaluation.metrics import measured_kbps, score, score_many

__all__ = ["measured_kbps", "score", "score_many"]
