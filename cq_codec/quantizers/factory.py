"""`get_quantizer(name, **kwargs)`: build a quantizer by name."""

from cq_codec.quantizers.gumbel import GumbelQuantizer
from cq_codec.quantizers.pq import ProductQuantizer
from cq_codec.quantizers.rvq import ResidualVectorQuantizer
from cq_codec.quantizers.softmax import SoftmaxQuantizer
from cq_codec.quantizers.vq import VectorQuantizer

__all__ = ["QUANTIZERS", "get_quantizer"]

QUANTIZERS = {
    "softmax": SoftmaxQuantizer,
    "vq": VectorQuantizer,
    "rvq": ResidualVectorQuantizer,
    "gumbel": GumbelQuantizer,
    "pq": ProductQuantizer,
}


def get_quantizer(name, **kwargs):
    """Returns `QUANTIZERS[name](**kwargs)`; ValueError naming the valid names otherwise."""
    if not isinstance(name, str) or name.lower() not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; valid names: {', '.join(QUANTIZERS)}")
    return QUANTIZERS[name.lower()](**kwargs)
