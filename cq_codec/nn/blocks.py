"""Residual blocks and resampling layers of the residual codec modules and the waveform codec.

All layers take and return channels-last tensors `[B, T, C]`. The three block types (gln,
bottleneck, separable) are written once (`_BlockBase.build` / `call`); the CQ modules use them
with "same" padding (`GatedResidualBlock`, `BottleneckBlock`, `SeparableBlock`), the waveform
codec causally (`CausalResidualUnit`: every k-tap conv a `CausalConv1D`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = ["GatedResidualBlock", "BottleneckBlock", "SeparableBlock", "CausalResidualUnit", "CausalConv1D",
           "SubPixelUpsample1D", "make_block", "BLOCK_TYPES"]

_PKG = "cq_codec"


@keras.saving.register_keras_serializable(package=_PKG)
class CausalConv1D(layers.Layer):
    """Conv1D with (kernel - 1) * dilation zeros of history on the left: `[B, T, C] -> [B, T / stride, F]`.

    `depthwise=True` makes it a depthwise convolution (filters = input channels)."""

    def __init__(self, filters: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 depthwise: bool = False, **kwargs):
        super().__init__(**kwargs)
        if min(filters, kernel_size, stride, dilation) < 1:
            raise ValueError(f"CausalConv1D: filters, kernel_size, stride and dilation must be >= 1; got "
                             f"{filters}, {kernel_size}, {stride}, {dilation}")
        self.filters, self.kernel_size = int(filters), int(kernel_size)
        self.stride, self.dilation, self.depthwise = int(stride), int(dilation), bool(depthwise)
        self.pad = (self.kernel_size - 1) * self.dilation
        # With stride s the window of output t ends on input t * s + s - 1: pad (s - 1) fewer on
        # the left than a stride-1 causal conv, so output t sees inputs up to the end of its block.
        self.left = max(self.pad - (self.stride - 1), 0)

    def build(self, input_shape):
        if self.depthwise:
            self.conv = layers.DepthwiseConv1D(self.kernel_size, strides=self.stride, padding="valid",
                                               dilation_rate=self.dilation)
        else:
            self.conv = layers.Conv1D(self.filters, self.kernel_size, strides=self.stride, padding="valid",
                                      dilation_rate=self.dilation)
        t = None if input_shape[1] is None else input_shape[1] + self.left
        self.conv.build((input_shape[0], t, input_shape[-1]))

    @property
    def history(self) -> int:
        """Input steps before the block of an output that it depends on."""
        return self.left

    def call(self, x):
        if self.left:
            x = ops.pad(x, ((0, 0), (self.left, 0), (0, 0)))
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        t = None if input_shape[1] is None else input_shape[1] // self.stride
        return (input_shape[0], t, input_shape[-1] if self.depthwise else self.filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=self.kernel_size, stride=self.stride,
                   dilation=self.dilation, depthwise=self.depthwise)
        return cfg


class _BlockBase(layers.Layer):
    """The residual blocks, one build / call per `block_type`:

    gln: 1x1 C->B, gated pair (linear * tanh, kernel k, dilation d), 1x1 B->C, LeakyReLU, + input.
    bottleneck: 1x1 C->B, LeakyReLU, conv k (dilated), LeakyReLU, 1x1 B->C, + input.
    separable: depthwise conv k (dilated) on C, 1x1 C->B, LeakyReLU, 1x1 B->C, + input.

    `causal`: the k-tap convs see only the past (`CausalConv1D`); else "same" padding. (The
    sublayers' attribute names and order are what saved models' weight paths hold.)"""

    block_type = "gln"
    causal = False

    def __init__(self, channels: int, bottleneck: int, kernel_size: int = 9, dilation: int = 1, **kwargs):
        super().__init__(**kwargs)
        if channels < 1 or bottleneck < 1 or kernel_size < 1 or dilation < 1:
            raise ValueError(f"{type(self).__name__}: channels, bottleneck, kernel_size and dilation must be >= 1; "
                             f"got {channels}, {bottleneck}, {kernel_size}, {dilation}")
        self.channels = int(channels)
        self.bottleneck = int(bottleneck)
        self.kernel_size = int(kernel_size)
        self.dilation = int(dilation)

    def _pointwise(self, n: int):
        return layers.Conv1D(n, 1) if self.causal else layers.Conv1D(n, 1, padding="same")

    def _taps(self, n: int, depthwise: bool = False):
        k, d = self.kernel_size, self.dilation
        if self.causal:
            return CausalConv1D(n, k, dilation=d, depthwise=depthwise)
        if depthwise:
            return layers.DepthwiseConv1D(k, padding="same", dilation_rate=d)
        return layers.Conv1D(n, k, padding="same", dilation_rate=d)

    def build(self, input_shape):
        b = self.bottleneck
        mid = tuple(input_shape[:-1]) + (b,)
        if self.block_type == "gln":
            self.reduce, self.linear, self.gate = self._pointwise(b), self._taps(b), self._taps(b)
            built = [(self.reduce, input_shape), (self.linear, mid), (self.gate, mid)]
        elif self.block_type == "bottleneck":
            self.reduce, self.mid = self._pointwise(b), self._taps(b)
            built = [(self.reduce, input_shape), (self.mid, mid)]
        else:
            self.depthwise, self.reduce = self._taps(self.channels, depthwise=True), self._pointwise(b)
            built = [(self.depthwise, input_shape), (self.reduce, input_shape)]
        self.expand = self._pointwise(self.channels)
        for layer, shape in built + [(self.expand, mid)]:
            layer.build(shape)

    def call(self, x):
        if self.block_type == "gln":
            h = self.reduce(x)
            h = self.linear(h) * ops.tanh(self.gate(h))
            return x + ops.leaky_relu(self.expand(h), negative_slope=0.2)
        if self.block_type == "bottleneck":
            h = ops.leaky_relu(self.reduce(x), negative_slope=0.2)
            h = ops.leaky_relu(self.mid(h), negative_slope=0.2)
            return x + self.expand(h)
        h = ops.leaky_relu(self.reduce(self.depthwise(x)), negative_slope=0.2)
        return x + self.expand(h)

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

    block_type = "gln"


@keras.saving.register_keras_serializable(package=_PKG)
class BottleneckBlock(_BlockBase):
    """A plain 3-conv bottleneck: 1x1 C->B, LeakyReLU, conv k (dilated) B->B, LeakyReLU, 1x1 B->C, + input."""

    block_type = "bottleneck"


@keras.saving.register_keras_serializable(package=_PKG)
class SeparableBlock(_BlockBase):
    """A lean block: depthwise conv k (dilated) on C channels, 1x1 C->B, LeakyReLU, 1x1 B->C, + input.

    The depthwise-separable factorisation (Chollet, Xception 2017) cuts the k-tap convolution's
    cost from B*B*k to C*k multiply-adds per sample.
    """

    block_type = "separable"


_BLOCKS = {"gln": GatedResidualBlock, "bottleneck": BottleneckBlock, "separable": SeparableBlock}
BLOCK_TYPES = tuple(_BLOCKS)


@keras.saving.register_keras_serializable(package=_PKG)
class CausalResidualUnit(_BlockBase):
    """Any block type made causal (the waveform codec's residual unit): `[B, T, C] -> [B, T, C]`."""

    causal = True

    def __init__(self, channels: int, bottleneck: int, kernel_size: int = 7, dilation: int = 1,
                 block_type: str = "bottleneck", **kwargs):
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"unknown block_type {block_type!r}; valid: {', '.join(BLOCK_TYPES)}")
        super().__init__(channels, bottleneck, kernel_size, dilation, **kwargs)
        self.block_type = block_type

    @property
    def history(self) -> int:
        return (self.kernel_size - 1) * self.dilation

    def get_config(self):
        cfg = super().get_config()
        cfg.update(block_type=self.block_type)
        return cfg


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
