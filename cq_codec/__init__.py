"""cq-codec: a collaborative-quantization LPC neural speech codec (TensorFlow 2 / Keras 3)."""

__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def __getattr__(name):
    """`cq_codec.load` imports the API (and TensorFlow) on first use only (PEP 562)."""
    if name == "load":
        from cq_codec.api import load
        return load
    raise AttributeError(f"module 'cq_codec' has no attribute {name!r}")
