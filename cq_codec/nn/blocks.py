"""Residual blocks and resampling layers of the residual codec modules.

All layers take and return channels-last tensors `[B, T, C]`.
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = ["GatedResidualBlock", "BottleneckBlock", "SeparableBlock", "SubPixelUpsample1D", "make_block", "BLOCK_TYPES"]

_PKG = "cq_codec"


class _BlockBase(layers.Layer):
    def __init__(self, channels: int, bottleneck: int, kernel_size: int = 9, dilation: int = 1, **kwargs):
        super().__init__(**kwargs)
        if channels < 1 or bottleneck < 1 or kernel_size < 1 or dilation < 1:
            raise ValueError(f"{type(self).__name__}: channels, bottleneck, kernel_size and dilation must be >= 1; "
                             f"got {channels}, {bottleneck}, {kernel_size}, {dilation}")
        self.channels = int(channels)
        self.bottleneck = int(bottleneck)
        self.kernel_size = int(kernel_size)
        self.dilation = int(dilation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(channels=self.channels, bottleneck=self.bottleneck, kernel_size=self.kernel_size,
                   dilation=self.dilation)
        return cfg


@keras.saving.register_keras_serializable(package=_PKG)
class GatedResidualBlock(_BlockBase):
    """The CQ/CMRL "gln" block: 1x1 C->B, gated pair (linear * tanh), 1x1 B->C, LeakyReLU, + input.

    [B, T, C] -> [B, T, C].
    """

    def build(self, input_shape):
        conv = lambda n, k, d=1: layers.Conv1D(n, k, padding="same", dilation_rate=d)
        self.reduce = conv(self.bottleneck, 1)
        self.linear = conv(self.bottleneck, self.kernel_size, self.dilation)
        self.gate = conv(self.bottleneck, self.kernel_size, self.dilation)
        self.expand = conv(self.channels, 1)
        self.reduce.build(input_shape)
        mid = tuple(input_shape[:-1]) + (self.bottleneck,)
        self.linear.build(mid)
        self.gate.build(mid)
        self.expand.build(mid)

    def call(self, x):
        h = self.reduce(x)
        h = self.linear(h) * ops.tanh(self.gate(h))
        return x + ops.leaky_relu(self.expand(h), negative_slope=0.2)


@keras.saving.register_keras_serializable(package=_PKG)
class BottleneckBlock(_BlockBase):
    """A plain 3-conv bottleneck: 1x1 C->B, LeakyReLU, conv k (dilated) B->B, LeakyReLU, 1x1 B->C, + input."""

    def build(self, input_shape):
        self.reduce = layers.Conv1D(self.bottleneck, 1, padding="same")
        self.mid = layers.Conv1D(self.bottleneck, self.kernel_size, padding="same", dilation_rate=self.dilation)
        self.expand = layers.Conv1D(self.channels, 1, padding="same")
        self.reduce.build(input_shape)
        mid = tuple(input_shape[:-1]) + (self.bottleneck,)
        self.mid.build(mid)
        self.expand.build(mid)

    def call(self, x):
        h = ops.leaky_relu(self.reduce(x), negative_slope=0.2)
        h = ops.leaky_relu(self.mid(h), negative_slope=0.2)
        return x + self.expand(h)


@keras.saving.register_keras_serializable(package=_PKG)
class SeparableBlock(_BlockBase):
    """A lean block: depthwise conv k (dilated) on C channels, 1x1 C->B, LeakyReLU, 1x1 B->C, + input.

    The depthwise-separable factorisation (Chollet, Xception 2017) cuts the k-tap convolution's
    cost from B*B*k to C*k multiply-adds per sample.
    """

    def build(self, input_shape):
        self.depthwise = layers.DepthwiseConv1D(self.kernel_size, padding="same", dilation_rate=self.dilation)
        self.reduce = layers.Conv1D(self.bottleneck, 1, padding="same")
        self.expand = layers.Conv1D(self.channels, 1, padding="same")
        self.depthwise.build(input_shape)
        self.reduce.build(input_shape)
        self.expand.build(tuple(input_shape[:-1]) + (self.bottleneck,))

    def call(self, x):
        h = ops.leaky_relu(self.reduce(self.depthwise(x)), negative_slope=0.2)
        return x + self.expand(h)


_BLOCKS = {"gln": GatedResidualBlock, "bottleneck": BottleneckBlock, "separable": SeparableBlock}
BLOCK_TYPES = tuple(_BLOCKS)


def make_block(block_type: str, channels: int, bottleneck: int, kernel_size: int, dilation: int, name=None):
    """Factory over the block types ('gln', 'bottleneck', 'separable')."""
    if block_type not in _BLOCKS:
        raise ValueError(f"unknown block_type {block_type!r}; valid: {', '.join(_BLOCKS)}")
    return _BLOCKS[block_type](channels, bottleneck, kernel_size, dilation, name=name)


@keras.saving.register_keras_serializable(package=_PKG)
class SubPixelUpsample1D(layers.Layer):
    """Sub-pixel upsampling (Shi et al., CVPR 2016) in 1-D: [B, T, C] -> [B, T*factor, out_channels].

    A convolution makes factor*out_channels channels, which are interleaved into time.
    """

    def __init__(self, factor: int, out_channels: int, kernel_size: int = 9, **kwargs):
        super().__init__(**kwargs)
        if factor < 1 or out_channels < 1:
            raise ValueError(f"SubPixelUpsample1D: factor and out_channels must be >= 1; got {factor}, {out_channels}")
        self.factor = int(factor)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        self.conv = layers.Conv1D(self.factor * self.out_channels, self.kernel_size, padding="same")
        self.conv.build(input_shape)

    def call(self, x):
        h = self.conv(x)
        b, t = ops.shape(h)[0], ops.shape(h)[1]
        return ops.reshape(h, (b, t * self.factor, self.out_channels))

    def compute_output_shape(self, input_shape):
        t = None if input_shape[1] is None else input_shape[1] * self.factor
        return (input_shape[0], t, self.out_channels)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(factor=self.factor, out_channels=self.out_channels, kernel_size=self.kernel_size)
        return cfg
