"""Pluggable quantizers with one interface (docs/DESIGN.md, "Quantizers")."""

from cq_codec.quantizers import entropy
from cq_codec.quantizers.base import Quantizer, QuantizerOutput, Schedule
from cq_codec.quantizers.factory import QUANTIZERS, get_quantizer
from cq_codec.quantizers.gumbel import GumbelQuantizer
from cq_codec.quantizers.pq import ProductQuantizer
from cq_codec.quantizers.rvq import ResidualVectorQuantizer
from cq_codec.quantizers.softmax import SoftmaxQuantizer, uniform_grids
from cq_codec.quantizers.vq import VectorQuantizer

__all__ = [
    "entropy", "Quantizer", "QuantizerOutput", "Schedule", "QUANTIZERS", "get_quantizer", "GumbelQuantizer",
    "ProductQuantizer", "ResidualVectorQuantizer", "SoftmaxQuantizer", "uniform_grids",
    "VectorQuantizer",
]
