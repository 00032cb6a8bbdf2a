"""cq-codec: a collaborative-quantization LPC neural speech codec (TensorFlow 2 / Keras 3)."""

__version__ = "0.1.0"
