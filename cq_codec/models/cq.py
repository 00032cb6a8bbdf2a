"""The CQ codec: LPC front end with collaboratively quantized LSFs + a cascade of residual modules.

Training works on single codec frames (docs/DESIGN.md "Training examples"): the LSFs of hops
t-1, t, t+1 are quantized by a trainable per-LSF scalar codebook (Zhen et al., ICASSP 2020),
turned into the per-sample A(z) through a differentiable LSF -> polynomial path (which the
original could not do, so its LSF codebook learnt only from entropy terms), the residual is
computed in the graph and coded by the cascade (CMRL, Zhen et al., Interspeech 2019), and the
loss is taken in the signal domain: the residual error is passed through 1/A(z).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import constants as C
import lpc
from lpc import tf_ops
from lpc.ltp import LongTermPredictor
from lpc.tf_ops import repair_lsf_tf
from cq_codec import losses as L
from cq_codec.models.residual_module import ResidualModule
from cq_codec.quantizers.gain import GainQuantizer
from cq_codec.quantizers.softmax import SoftmaxQuantizer, uniform_grids

__all__ = ["CQCodec", "default_lsf_grid", "with_ltp"]

# Typical LSF ranges (rad) of the first and last LSF (REFERENCE.md); the others are interpolated.
_LSF_LOW = np.linspace(0.03, 2.55, C.LPC_ORDER)
_LSF_HIGH = np.linspace(0.59, 3.10, C.LPC_ORDER)


def default_lsf_grid(num_bins: int = 16, lsf_samples: np.ndarray | None = None) -> np.ndarray:
    """[16, K] initial LSF codebook: uniform grids per LSF, over the 1st-99th percentile of
    `lsf_samples [N, 16]` when given, else over the typical ranges."""
    if lsf_samples is not None and len(lsf_samples) >= 16:
        lo, hi = np.percentile(np.asarray(lsf_samples), [1, 99], axis=0)
        hi = np.maximum(hi, lo + 1e-3)
        return uniform_grids(lo, hi, num_bins)
    return uniform_grids(_LSF_LOW, _LSF_HIGH, num_bins)


@keras.saving.register_keras_serializable(package="cq_codec")
class CQCodec(keras.Model):
    """Inputs: dict `x [B, 16 + 512]`, `lsf [B, 3, 16]`; `call` returns the decoded frame [B, 512].

    Args:
      module_configs: one ResidualModule kwargs dict per cascade stage.
      is_cq: train the LSF codebook jointly (collaborative quantization); else it stays fixed.
      lsf_grid: [16, K] initial LSF codebook (see `default_lsf_grid`).
      residual_scale: the residual is multiplied by this before the cascade (unit-ish variance).
      signal_std: the corpus std after pre-emphasis, by which inputs are divided.
      loss_weights: (time RMSE, multi-scale mel, sparsity) weights.
      num_active: modules used (the trainer sets it per stage; inference may use any prefix).
      entropy_tables: JSON-friendly dict of the bitstream's probability tables (set by
        `cq_codec.bitstream.codec_stream.fit_entropy_tables`), saved with the model; or None.
      gain: None (no gain side information), or `GainQuantizer` kwargs: the cascade codes the
        residual divided by its coded per-sub-frame gain (gain-shape; cq_codec/quantizers/gain.py).
      ltp: None, or `lpc.ltp.LongTermPredictor` kwargs: at inference the cascade codes the
        open-loop pitch residual and the decoder runs the pitch synthesis filter (lag and gain
        per sub-frame coded in the stream). Either added after training (`with_ltp`,
        `scripts/add_ltp.py`, its entropy tables refitted) or trained with (`--ltp_threshold`:
        the examples carry the frame's open-loop prediction as "ltp", `cq_codec.data.pitch`).
    """

    def __init__(self, module_configs, is_cq=True, lsf_grid=None, residual_scale=1.0, signal_std=1.0,
                 loss_weights=(60.0, 10.0, 10.0), num_active=None, entropy_tables=None, gain=None, ltp=None, **kwargs):
        super().__init__(**kwargs)
        if not module_configs:
            raise ValueError("CQCodec needs at least one module config")
        self.module_configs = [dict(c) for c in module_configs]
        self.is_cq = bool(is_cq)
        grid = np.asarray(lsf_grid if lsf_grid is not None else default_lsf_grid(), np.float32)
        if grid.ndim != 2 or grid.shape[0] != C.LPC_ORDER:
            raise ValueError(f"lsf_grid must be [{C.LPC_ORDER}, K]; got shape {grid.shape}")
        self.lsf_grid = grid
        self.residual_scale = float(residual_scale)
        self.signal_std = float(signal_std)  # corpus std after pre-emphasis (input normalisation)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.entropy_tables = entropy_tables
        self.gain = dict(gain) if gain else None
        self.gain_quantizer = GainQuantizer(**self.gain) if self.gain else None
        self.ltp_config = dict(ltp) if ltp else None
        self.ltp = LongTermPredictor(**self.ltp_config) if self.ltp_config else None
        self.lsf_quantizer = SoftmaxQuantizer(initial_bins=grid, trainable_bins=self.is_cq, alpha=300.0,
                                              name="lsf_quantizer")
        self.codec_modules = [ResidualModule(**c, name=f"module_{i}") for i, c in enumerate(self.module_configs)]
        n = len(self.codec_modules)
        self.num_active = n if num_active is None else int(num_active)
        # Training-time switch (set by the trainer per stage, not saved): loss over every prefix.
        self.prefix_loss = False
        # Training-time loss setting (from the Config, not saved): the time loss's error passes
        # through 1/A(z/gamma) (perceptual weighting A(z)/A(z/gamma) of the signal error); 1 = off.
        self.weighting_gamma = 1.0
        # Training-time loss setting (from the Config, not saved): an extra spectral term
        # (cq_codec.losses.SPECTRAL_LOSSES) and its weight.
        self.spectral_loss = "none"
        self.spectral_weight = 0.0
        self.spectral_high_weight = (1.0,)   # per operating point (i-th: the output of i modules; last reused)
        self.spectral_low_weight = (1.0,)    # the same for 0-1 kHz
        # Training-time loss setting (from the Config, not saved): with pitch prediction in the
        # examples, the error passes through the pitch synthesis filter before the loss.
        self.ltp_shaped_loss = False
        if not 1 <= self.num_active <= n:
            raise ValueError(f"num_active must be in 1..{n}; got {num_active}")
        # Entropy weights tau: index 0 is the LSF stream, 1..n the modules (adapted per epoch).
        self.tau = self.add_weight(shape=(n + 1,), initializer="zeros", trainable=False, name="tau")
        self.window = tf.constant(lpc.frame_window(), tf.float32)
        names = ["loss", "time", "mel", "spec", "kbps", "lsf_bits", "H_lsf", "Hh_lsf"] + [
            f"{k}_{i}" for i in range(1, n + 1) for k in ("H", "Hh", "util", "ppl", "aux")]
        self._trackers = {k: keras.metrics.Mean(name=k) for k in names}

    # ------------------------------------------------------------------ forward
    def build(self, input_shape=None):
        b = None
        self.lsf_quantizer.build((b, 3, C.LPC_ORDER))
        for m in self.codec_modules:
            m.build((b, C.FRAME_SIZE, 1))
        self.built = True

    def quantize_lsf(self, lsf, training=None):
        """[B, T, 16] -> (repaired quantized LSFs [B, T, 16], QuantizerOutput)."""
        out = self.lsf_quantizer(lsf, training=training)
        return repair_lsf_tf(out.quantized), out

    def forward(self, inputs, training=None, num_active=None):
        """Everything the loss needs, as a dict of tensors and per-module QuantizerOutputs."""
        # Denoising (speech enhancement): the encoder sees `x_noisy` and the LSFs of the noisy
        # signal (`lsf_noisy`), the target is the clean `x` through the same A(z).
        x = inputs["x"]
        x_in = inputs.get("x_noisy", x)
        lsf_q, lsf_out = self.quantize_lsf(inputs.get("lsf_noisy", inputs["lsf"]), training=training)
        a = tf_ops.per_sample_filters_tf(lsf_q)                      # [B, 512, 17]
        e = tf_ops.residual_tf(x, a) * self.window                    # [B, 512] target residual
        e_in = e if x_in is x else tf_ops.residual_tf(x_in, a) * self.window
        if "ltp" in inputs:
            # Pitch prediction in training (cq_codec.data.pitch): the cascade codes the open-loop
            # pitch residual, as the encoder hands it at inference, and the prediction is added
            # back, so the error (and the loss) is the cascade's error as before.
            if x_in is not x:
                raise ValueError("pitch prediction in training does not support denoising examples")
            e = e - inputs["ltp"] * self.window
            e_in = e
        r = e_in * self.residual_scale
        # Gain-shape: the cascade codes the residual over its quantized sub-frame gains (from the
        # encoder's input), and its output is scaled back by them.
        scale = self.residual_scale if self.gain_quantizer is None else self.residual_scale / self.gain_quantizer.quantize_tf(r)
        r = e_in * scale
        total = tf.zeros_like(r)
        outs, errs = [], []
        for m in self.codec_modules[: num_active or self.num_active]:
            y, q = m(r[..., None], training=training)
            y = y[..., 0]
            total += y
            r = r - y
            outs.append(q)
            errs.append(e - total / scale)
        a_centre = tf_ops.lsf_to_lpc_tf(lsf_q[:, 1])
        x_w = x[:, C.LPC_ORDER:] * self.window
        k = len(errs) if self.prefix_loss and training else 1
        # With prefix_loss, every prefix of the cascade is an operating point: the loss sees each
        # one's output (stacked along the batch, the full cascade last), so joint fine-tuning
        # cannot trade module 1's standalone quality for the full cascade's.
        err = tf.concat(errs[-k:], 0)
        if self.ltp_shaped_loss and "ltp_lag" in inputs:
            # The decoder's pitch synthesis filter shapes the cascade's error: the loss sees it so.
            err = tf_ops.pitch_synthesis_tf(err, tf.tile(inputs["ltp_lag"], [k, 1]), tf.tile(inputs["ltp_gain"], [k, 1]))
        sig = tf_ops.synthesis_error_tf(err, tf.tile(a_centre, [k, 1]))
        err_sig = sig[-tf.shape(x_w)[0]:]
        out = {"x": x_w, "x_hat": x_w - err_sig, "err_sig": err_sig, "lsf": lsf_out, "modules": outs,
               "loss_modules": list(range(len(errs) - k + 1, len(errs) + 1))}   # modules of each stacked part
        if k > 1:
            out["loss_x"] = tf.tile(x_w, [k, 1])
            out["loss_x_hat"] = out["loss_x"] - sig
        if self.weighting_gamma < 1.0:
            shrink = tf.constant(self.weighting_gamma ** np.arange(C.LPC_ORDER + 1), tf.float32)
            out["loss_err_w"] = tf_ops.synthesis_error_tf(err, tf.tile(a_centre * shrink, [k, 1]))
        return out

    def call(self, inputs, training=None):
        return self.forward(inputs, training=training)["x_hat"]

    # ------------------------------------------------------------------ losses
    def positions(self, i: int) -> int:
        return self.codec_modules[i].num_positions

    def _spectral_term(self, x, x_hat, loss_modules):
        """The spectral loss over the stacked outputs ([k B, N]; part i is the output of
        loss_modules[i] modules), each part with its operating point's band weights."""
        hw, lw = tuple(self.spectral_high_weight), tuple(getattr(self, "spectral_low_weight", (1.0,)))
        weights = [(hw[min(m, len(hw)) - 1], lw[min(m, len(lw)) - 1]) for m in loss_modules]
        if len(set(weights)) == 1:
            return L.spectral_loss(self.spectral_loss, x, x_hat, *weights[0])
        xs, ys = tf.split(x, len(weights)), tf.split(x_hat, len(weights))
        return tf.add_n([L.spectral_loss(self.spectral_loss, a, b, *w) for a, b, w in zip(xs, ys, weights)]) / len(weights)

    def compute_terms(self, fwd, training=False):
        """Loss terms and metrics (scalars) from `forward`'s output."""
        w_time, w_mel, w_sparse = self.loss_weights
        b = tf.cast(tf.shape(fwd["x"])[0], tf.float32)
        x, x_hat = fwd.get("loss_x", fwd["x"]), fwd.get("loss_x_hat", fwd["x_hat"])
        # The time term: the (perceptually weighted, when weighting_gamma < 1) error's RMS.
        time = (L.time_rmse(fwd["loss_err_w"], 0.0) if "loss_err_w" in fwd else L.time_rmse(x, x_hat))
        t = {"time": time, "mel": L.multiscale_mel_loss(x, x_hat)}
        loss = w_time * t["time"] + w_mel * t["mel"]
        if self.spectral_loss != "none":
            t["spec"] = self._spectral_term(x, x_hat, fwd["loss_modules"])
            loss += self.spectral_weight * t["spec"]
        lsf = fwd["lsf"]
        lsf_bits = lsf.bits / (3.0 * b)                                # bits per frame (16 LSFs)
        frame_bits = lsf_bits
        if self.is_cq:
            loss += self.tau[0] * lsf_bits / C.LPC_ORDER + w_sparse * lsf.metrics.get("sparsity", 0.0) + lsf.aux_loss
        for i, q in enumerate(fwd["modules"]):
            symbols = self.positions(i) * self.codec_modules[i].quantizer.num_streams
            h = q.bits / (b * symbols)                                 # bits per code symbol
            frame_bits += q.bits / b
            aux = q.aux_loss + w_sparse * q.metrics.get("sparsity", 0.0)
            loss += self.tau[i + 1] * h + aux
            t[f"H_{i + 1}"] = h
            t[f"Hh_{i + 1}"] = q.metrics["hard_bits_per_code"] / self.codec_modules[i].quantizer.num_streams
            t[f"util_{i + 1}"] = q.metrics["utilisation"]
            t[f"ppl_{i + 1}"] = q.metrics["perplexity"]
            t[f"aux_{i + 1}"] = aux
        t["lsf_bits"] = lsf_bits
        t["H_lsf"] = lsf_bits / C.LPC_ORDER
        t["Hh_lsf"] = lsf.metrics["hard_bits_per_code"] / C.LPC_ORDER
        t["kbps"] = frame_bits * C.FRAMES_PER_SECOND / C.BITS_PER_KBIT
        t["loss"] = loss
        return t

    def _report(self, terms):
        for k, v in terms.items():
            self._trackers[k].update_state(v)
        return {k: self._trackers[k].result() for k in terms}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.compute_terms(self.forward(data, training=True), training=True)
            # Gradients are summed over replicas, so each replica contributes loss / replicas.
            scaled = terms["loss"] / replicas
        pairs = [(g, v) for g, v in zip(tape.gradient(scaled, self.trainable_variables),
                                        self.trainable_variables) if g is not None]
        self.optimizer.apply_gradients(pairs)
        return self._report(terms)

    def test_step(self, data):
        return self._report(self.compute_terms(self.forward(data, training=False)))

    # ------------------------------------------------------------------ inference on frames
    def frame_functions(self, n: int | None = None, streams: tuple | None = None, strided_out: bool = False):
        """(encode, decode): the traced `tf.function`s of the frame codec with the first `n`
        modules, with input signatures (tensorflow-compression style; `api.Codec` exports them
        to a SavedModel as they are): encode(frames float32 [N, 512]) -> {"codes_i": int32
        [N, P_i, S_i]}, decode(codes_0, ..., codes_{n-1}) -> {"frames": float32 [N, 512]}.
        `streams`: the S_i decode takes (default: each quantizer's streams). `strided_out`: the
        encoders' output convolutions as `residual_module.strided_output_conv` (the "fast"
        backend). Cached; eager Keras calls cost several times the convolutions themselves on
        this model size."""
        n = int(n or len(self.codec_modules))
        streams = tuple(int(k) for k in (streams or [m.quantizer.num_streams for m in self.codec_modules[:n]]))
        # Python-side quantizer state (RVQ stages in use) is baked into a trace: part of the key.
        stages = tuple(getattr(m.quantizer, "num_active_stages", 0) for m in self.codec_modules[:n])
        fns = self.__dict__.setdefault("_cq_inference_fns", {})
        strided_out = bool(strided_out)
        if ("encode", n, stages, strided_out) not in fns:
            fns["encode", n, stages, strided_out] = tf.function(
                lambda frames: {f"codes_{i}": c for i, c in enumerate(self._encode_frames(frames, n, strided_out))},
                input_signature=[tf.TensorSpec([None, C.FRAME_SIZE], tf.float32, name="frames")],
                reduce_retracing=True)
        if ("decode", n, streams, stages) not in fns:
            specs = [tf.TensorSpec([None, m.num_positions, k], tf.int32, name=f"codes_{i}")
                     for i, (m, k) in enumerate(zip(self.codec_modules[:n], streams))]
            fns["decode", n, streams, stages] = tf.function(
                lambda *codes: {"frames": self._decode_frames(list(codes))}, input_signature=specs,
                reduce_retracing=True)
        return fns["encode", n, stages, strided_out], fns["decode", n, streams, stages]

    def encode_frames(self, residual_frames, num_active=None, strided_out: bool = False):
        """Windowed residual frames [N, 512] -> list of int32 codes [N, positions, S] per module."""
        n = int(num_active or len(self.codec_modules))
        out = self.frame_functions(n, strided_out=strided_out)[0](tf.convert_to_tensor(residual_frames, tf.float32))
        return [out[f"codes_{i}"] for i in range(n)]

    def decode_frames(self, codes):
        """List of per-module codes (any prefix of the cascade) -> residual frames [N, 512]."""
        codes = [tf.convert_to_tensor(c, tf.int32) for c in codes]
        if not 1 <= len(codes) <= len(self.codec_modules):
            raise ValueError(f"decode_frames: expected codes of 1..{len(self.codec_modules)} modules; got {len(codes)}")
        streams = tuple(int(c.shape[-1]) for c in codes)   # RVQ: codes of fewer stages decode too
        return self.frame_functions(len(codes), streams)[1](*codes)["frames"]

    def _encode_frames(self, residual_frames, num_active, strided_out=False):
        r = residual_frames * self.residual_scale
        codes = []
        for i, m in enumerate(self.codec_modules[:num_active]):
            if i == num_active - 1:   # the last module's decoder is not needed to encode
                codes.append(m.quantizer(m.encode_latent(r[..., None], strided_out), training=False).codes)
                break
            if strided_out:           # module.call with the strided output convolution
                z = m.encode_latent(r[..., None], True)
                q = m.quantizer(z, training=False)
                y = m.decode_latent(m.bypass * z + (1.0 - m.bypass) * q.quantized)
            else:
                y, q = m(r[..., None], training=False)
            codes.append(q.codes)
            r = r - y[..., 0]
        return codes

    def _decode_frames(self, codes):
        total = 0.0
        for m, c in zip(self.codec_modules, codes):
            total += m.decode_codes(c)[..., 0]
        return total / self.residual_scale

    def get_config(self):
        cfg = super().get_config()
        cfg.update(module_configs=self.module_configs, is_cq=self.is_cq, lsf_grid=self.lsf_grid.tolist(),
                   residual_scale=self.residual_scale, signal_std=self.signal_std, loss_weights=list(self.loss_weights),
                   num_active=self.num_active, entropy_tables=self.entropy_tables)
        if self.gain:   # only when set, so a gain-less model's config (its identity) is unchanged
            cfg["gain"] = dict(self.gain)
        if self.ltp_config:
            cfg["ltp"] = dict(self.ltp_config)
        return cfg


def with_ltp(model: CQCodec, gain_levels: int = 8, gain_step: float = 0.125, threshold: float = 0.3,
             hold: float = 0.0) -> CQCodec:
    """A copy of trained `model` (same weights) with open-loop long-term prediction
    (`lpc.ltp.LongTermPredictor`) and no entropy tables: fit them next
    (`cq_codec.inference.fit_entropy_tables`), since the pitch codes are a stream of their own."""
    cfg = model.get_config()
    ltp = LongTermPredictor(gain_levels, gain_step, threshold, hold).get_config()
    cfg.update(entropy_tables=None, ltp=ltp)
    out = CQCodec.from_config(cfg)
    out.build()
    out.set_weights(model.get_weights())
    return out
