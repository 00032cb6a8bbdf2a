"""Waveform discriminators of HiFi-GAN (Kong et al., NeurIPS 2020) for the waveform codec's
optional adversarial stage (`--adversarial`): a multi-period discriminator (the signal folded
into [T / p, p] columns, 2-D convs along time) and a multi-scale discriminator (1-D grouped convs
on the signal and its 2x / 4x average-pooled versions), LSGAN losses and feature matching.

Each sub-discriminator returns (logits, [feature maps]); `WaveDiscriminator` returns the list of
them. Input audio `[B, N]`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

__all__ = ["PeriodDiscriminator", "ScaleDiscriminator", "WaveDiscriminator", "discriminator_loss",
           "generator_adversarial_loss", "feature_matching_loss"]

_PKG = "cq_codec"


class _ConvStack(layers.Layer):
    """What both sub-discriminators share: `convs` each followed by LeakyReLU(0.1), then `post`
    (no activation); every layer's output is a feature map for feature matching."""

    def _stack(self, h):
        feats = []
        for conv in self.convs:
            h = ops.leaky_relu(conv(h), negative_slope=0.1)
            feats.append(h)
        h = self.post(h)
        feats.append(h)
        return h, feats


@keras.saving.register_keras_serializable(package=_PKG)
class PeriodDiscriminator(_ConvStack):
    """HiFi-GAN's period-p sub-discriminator: [B, N] -> logits [B, T', 1, 1], features."""

    def __init__(self, period: int, channels: int = 32, num_layers: int = 4, **kwargs):
        super().__init__(**kwargs)
        if period < 1 or channels < 1 or num_layers < 1:
            raise ValueError(f"PeriodDiscriminator: period, channels, num_layers must be >= 1; got "
                             f"{period}, {channels}, {num_layers}")
        self.period, self.channels, self.num_layers = int(period), int(channels), int(num_layers)
        self.convs = [layers.Conv2D(min(channels * 2 ** i, channels * 8), (5, 1), strides=(3, 1), padding="same",
                                    name=f"conv{i}") for i in range(num_layers)]
        self.convs.append(layers.Conv2D(min(channels * 2 ** num_layers, channels * 8), (5, 1), padding="same",
                                        name="conv_last"))
        self.post = layers.Conv2D(1, (3, 1), padding="same", name="post")

    def call(self, x):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        pad = (self.period - n % self.period) % self.period
        x = ops.pad(x, ((0, 0), (0, pad)), mode="reflect") if self.period > 1 else x
        return self._stack(ops.reshape(x, (b, -1, self.period, 1)))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(period=self.period, channels=self.channels, num_layers=self.num_layers)
        return cfg


@keras.saving.register_keras_serializable(package=_PKG)
class ScaleDiscriminator(_ConvStack):
    """HiFi-GAN / MelGAN scale sub-discriminator on audio average-pooled by `pool`:
    [B, N] -> logits [B, T', 1], features."""

    def __init__(self, pool: int = 1, channels: int = 16, num_layers: int = 4, **kwargs):
        super().__init__(**kwargs)
        if pool < 1 or channels < 1 or num_layers < 1:
            raise ValueError(f"ScaleDiscriminator: pool, channels, num_layers must be >= 1; got "
                             f"{pool}, {channels}, {num_layers}")
        self.pool, self.channels, self.num_layers = int(pool), int(channels), int(num_layers)
        self.convs = [layers.Conv1D(channels, 15, padding="same", name="conv_in")]
        for i in range(num_layers):
            c = min(channels * 4 ** (i + 1), channels * 16)
            self.convs.append(layers.Conv1D(c, 41, strides=4, padding="same", groups=4 if c % 4 == 0 else 1,
                                            name=f"conv{i}"))
        self.convs.append(layers.Conv1D(min(channels * 16, channels * 4 ** num_layers), 5, padding="same",
                                        name="conv_last"))
        self.post = layers.Conv1D(1, 3, padding="same", name="post")

    def call(self, x):
        h = x[:, :, None]
        if self.pool > 1:
            h = ops.average_pool(h, self.pool * 2, strides=self.pool, padding="same")
        return self._stack(h)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool=self.pool, channels=self.channels, num_layers=self.num_layers)
        return cfg


@keras.saving.register_keras_serializable(package=_PKG)
class WaveDiscriminator(keras.Model):
    """Multi-period (periods) + multi-scale (pools) discriminators: [B, N] -> [(logits, feats), ...]."""

    def __init__(self, periods=(2, 3, 5, 7, 11), pools=(1, 2, 4), channels: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.periods, self.pools, self.channels = [int(p) for p in periods], [int(p) for p in pools], int(channels)
        if not self.periods and not self.pools:
            raise ValueError("WaveDiscriminator needs at least one period or one scale")
        self.subs = ([PeriodDiscriminator(p, channels, name=f"mpd_{p}") for p in self.periods]
                     + [ScaleDiscriminator(p, channels, name=f"msd_{p}") for p in self.pools])

    def call(self, x):
        return [d(x) for d in self.subs]

    def get_config(self):
        cfg = super().get_config()
        cfg.update(periods=self.periods, pools=self.pools, channels=self.channels)
        return cfg


def discriminator_loss(real_outputs, fake_outputs):
    """LSGAN: mean over sub-discriminators of E[(D(x) - 1)^2] + E[D(G(z))^2]."""
    total = 0.0
    for (r, _), (f, _) in zip(real_outputs, fake_outputs):
        total += tf.reduce_mean(tf.square(r - 1.0)) + tf.reduce_mean(tf.square(f))
    return total / len(real_outputs)


def generator_adversarial_loss(fake_outputs):
    """LSGAN generator term: mean over sub-discriminators of E[(D(G(z)) - 1)^2]."""
    return tf.add_n([tf.reduce_mean(tf.square(f - 1.0)) for f, _ in fake_outputs]) / len(fake_outputs)


def feature_matching_loss(real_outputs, fake_outputs):
    """Mean L1 distance between the discriminators' feature maps of real and decoded audio
    (the real features are constants); averaged over layers and sub-discriminators."""
    total, count = 0.0, 0
    for (_, rf), (_, ff) in zip(real_outputs, fake_outputs):
        for a, b in zip(rf, ff):
            total += tf.reduce_mean(tf.abs(tf.stop_gradient(a) - b))
            count += 1
    return total / max(count, 1)
