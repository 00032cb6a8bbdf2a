"""Encoding and decoding with a trained `CQCodec` (hard quantization), streaming with carried state.

wav -> high-pass -> pre-emphasis -> / std -> LSFs per hop -> quantized LSF codes -> residual with
the quantized, interpolated A(z) -> windowed 512-sample frames -> cascade codes; and back:
codes -> frames -> overlap-add -> 1/A(z) -> de-emphasis -> * std. The encoder and the decoder
rebuild A(z) from the same LSF codes with the same functions, so 1/A(z) inverts A(z) exactly.

`StreamEncoder` / `StreamDecoder` work chunk by chunk (`frames_per_chunk` hops) and carry every
piece of state between calls: the high-pass and pre-emphasis filter states, the LPC analysis
look-ahead (hop t's window ends at sample t * 480 + 240 + 512), the residual / synthesis filter
histories, the previous hop's quantized LSFs (sub-frame interpolation), the 32 residual samples a
frame needs from the next hop, the decoder's 32-sample overlap-add tail and the de-emphasis
state. The model always sees batches of exactly one chunk's frames, aligned to absolute frame
indices, so the codes (and the decoded audio) do not depend on how the input was split into
`push` calls: whole-utterance `encode` / `decode` are the same code run in one call. Memory is
bounded by one chunk plus about two hops of look-ahead, whatever the input length. The network
halves run on a `cq_codec.backends` backend ("keras", the default, or "tflite"), one call per
chunk; the rest is numpy.

Pipelining (`pipeline=True`; the batch paths `encode_blocks`, `encode`, `decode` and `api.Codec`
use it): the network call of chunk k runs on a worker thread while this thread does the numpy
work around it (the encoder: the LPC / pitch analysis of the input that follows, and the caller's
range coding of chunk k - 1; the decoder: range decoding of chunk k + 1 and the synthesis,
pitch synthesis and postfilter of chunk k - 1). TensorFlow and LiteRT release the GIL while they
compute. Every computation is the same one as without the pipeline, in the same order for each
piece of state (the network halves are stateless), so the codes, bytes and audio are
bit-identical (tests/test_pipeline_overlap.py); at most one chunk's network call is in flight.
docs/DESIGN.md "Speed, fifth pass" has the measurements.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

import constants as C
import lpc
from lpc.postfilter import Postfilter
from cq_codec.backends import get_backend
from cq_codec.bitstream import codec_stream as cs
from cq_codec.codes import DEFAULT_FRAMES_PER_CHUNK, CodeChunk, Codes, num_hops_for

__all__ = ["Codes", "CodeChunk", "StreamEncoder", "StreamDecoder", "encode", "encode_blocks", "decode",
           "fit_entropy_tables", "preprocess", "num_hops_for", "DEFAULT_FRAMES_PER_CHUNK"]

_LEFT = C.LPC_WINDOW // 2 - C.HOP_SIZE // 2        # 272: LPC window start before its hop


def preprocess(wav: np.ndarray, signal_std: float) -> np.ndarray:
    """16 kHz mono float wav [N] -> normalised pre-emphasised signal [N] (what the model sees)."""
    y, _ = lpc.highpass(np.asarray(wav, np.float64))
    y, _ = lpc.preemphasis(y)
    return y / signal_std


def _lsf_codes(model, lsf: np.ndarray) -> np.ndarray:
    """LSFs [T, 16] -> int32 codes [T, 16]: the LSF quantizer's nearest bins, in numpy (its eager
    call would also compute its training terms, ~10 % of encoding)."""
    return model.lsf_quantizer.encode_numpy(lsf)


def _quantized_lsf(model, lsf_codes: np.ndarray) -> np.ndarray:
    """int32 LSF codes [T, 16] -> repaired quantized LSFs float64 [T, 16]: the bins through the
    float32 `lpc.repair_lsf`, bit-identical to the graph's `repair_lsf_tf`; independent of T."""
    return lpc.repair_lsf(model.lsf_quantizer.decode_numpy(lsf_codes)).astype(np.float64)


class _Background:
    """`fn(*args)` on a thread of its own (the pipeline's network call); `result()` joins it and
    returns its value or re-raises its exception. One short-lived thread per chunk: nothing
    lingers when a stream is dropped half-way."""

    def __init__(self, fn, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="cq-codec-network")
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._value


def _check_chunk_size(frames_per_chunk) -> int:
    if isinstance(frames_per_chunk, bool) or int(frames_per_chunk) != frames_per_chunk or frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be a positive int, got {frames_per_chunk!r}")
    return int(frames_per_chunk)


class StreamEncoder:
    """Streaming encoder: `push(wav)` 16 kHz float samples [n] any number of times, then `finish()`.

    Both return the list of `CodeChunk`s completed so far (each `frames_per_chunk` hops, the last
    one possibly shorter). Hop t's codes need the input up to sample t * 480 + 1232 (LPC window of
    hop t + 1 reaches t * 480 + 480 + 752, the frame's last 32 samples are hop t + 1's residual).

    `pipeline=True`: a chunk's network call runs on a worker thread while the following pushes
    are analysed; the chunk is returned by the push that completes the next chunk (or by
    `finish`), so each chunk comes one chunk later than without it (same chunks, same codes).
    Off by default here (a live stream wants each chunk as soon as it is coded); the batch paths
    turn it on.
    """

    def __init__(self, model, num_active: int | None = None,
                 frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK, backend=None, pipeline: bool = False):
        n = model.num_active if num_active is None else int(num_active)
        if not 1 <= n <= len(model.codec_modules):
            raise ValueError(f"num_active must be in 1..{len(model.codec_modules)}; got {num_active}")
        self.model, self.num_active = model, n
        self.backend = get_backend(model, backend)   # the frame codec: "keras" (default) or "tflite"
        self.frames_per_chunk = _check_chunk_size(frames_per_chunk)
        self.num_samples = 0            # input samples pushed so far
        self._hp = self._pe = None      # high-pass, pre-emphasis states
        self._xp = np.zeros(_LEFT)      # [272 zeros, x...] from LPC hop `_h_lsf`'s window start
        self._h_lsf = 0                 # hops whose LSFs + residual are done
        self._lsf_prev = None           # quantized LSFs of hop _h_lsf - 1
        self._res_state = None          # residual filter history (last 16 input samples)
        self._e = np.zeros(0)           # residual from sample _h_frame * 480 on
        self._h_frame = 0               # frames cut so far
        self._frames, self._lsf_codes = [], []   # pending (not yet coded) frames / LSF codes
        self._ltp_hist = None if model.ltp is None else model.ltp.initial_history()   # original residual
        self._ltp_prev, self._pitch_codes = 0, []                                      # pending pitch codes
        self.pipeline = bool(pipeline)
        self._inflight = None           # pipeline: (network call, lsf, gain, pitch) of the chunk in flight
        self._finished = False

    def push(self, wav) -> list[CodeChunk]:
        if self._finished:
            raise RuntimeError("StreamEncoder.push after finish()")
        wav = np.asarray(wav, np.float64)
        if wav.ndim != 1:
            raise ValueError(f"push expects a 1-D 16 kHz signal; got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError("encode: the signal contains NaN or infinite samples")
        if wav.size == 0:
            return []
        y, self._hp = lpc.highpass(wav, self._hp)
        y, self._pe = lpc.preemphasis(y, self._pe)
        self._xp = np.concatenate([self._xp, y / self.model.signal_std])
        self.num_samples += wav.size
        return self._advance(final=False)

    def finish(self) -> list[CodeChunk]:
        """Flush: zero-pads the signal to whole hops and codes the rest."""
        if self._finished:
            raise RuntimeError("StreamEncoder.finish called twice")
        if self.num_samples == 0:
            raise ValueError("encode expects a non-empty signal; no samples were pushed")
        self._finished = True
        return self._advance(final=True)

    # ------------------------------------------------------------------ internals
    def _advance(self, final: bool) -> list[CodeChunk]:
        total = num_hops_for(self.num_samples)
        start = self._h_lsf * C.HOP_SIZE          # absolute xp index of self._xp[0]
        if final:
            ready = total
            need = (total - 1) * C.HOP_SIZE + C.LPC_WINDOW - start
            if len(self._xp) < need:
                self._xp = np.concatenate([self._xp, np.zeros(need - len(self._xp))])
        else:
            have = start + len(self._xp)
            ready = min(total, (have - C.LPC_WINDOW) // C.HOP_SIZE + 1) if have >= C.LPC_WINDOW else 0
        if ready > self._h_lsf:
            self._analyse(ready - self._h_lsf)
        frames_ready = total if final else max(0, self._h_lsf - 1)
        if frames_ready > self._h_frame:
            self._cut_frames(frames_ready - self._h_frame, final)
        return self._emit(final)

    def _analyse(self, k: int) -> None:
        """LSFs, their codes and the residual of the next k hops."""
        windows = np.lib.stride_tricks.sliding_window_view(self._xp[: (k - 1) * C.HOP_SIZE + C.LPC_WINDOW],
                                                           C.LPC_WINDOW)[:: C.HOP_SIZE]
        lsf = lpc.lpc_to_lsf(lpc.lpc_from_frames(windows))
        codes = _lsf_codes(self.model, lsf)
        lsf_q = _quantized_lsf(self.model, codes)
        a_sub = lpc.subframe_lpc(lsf_q, self._lsf_prev)
        x = self._xp[_LEFT: _LEFT + k * C.HOP_SIZE]
        e, self._res_state = lpc.residual(x, a_sub, self._res_state)
        ltp = self.model.ltp
        if ltp is not None:   # open-loop pitch prediction: the cascade codes what it leaves
            pitch = ltp.analyze(self._ltp_hist, e, self._ltp_prev)
            e2 = ltp.analysis_filter(self._ltp_hist, e, pitch)
            self._ltp_hist = np.concatenate([self._ltp_hist, e])[-len(self._ltp_hist):]
            self._ltp_prev = int(pitch[-1, 0])
            self._pitch_codes.append(pitch.reshape(k, ltp.per_hop, 2))
            e = e2
        self._lsf_prev = lsf_q[-1]
        self._lsf_codes.append(codes)
        self._e = np.concatenate([self._e, e])
        self._xp = self._xp[k * C.HOP_SIZE:]
        self._h_lsf += k

    def _cut_frames(self, k: int, final: bool) -> None:
        frames = lpc.frame_signal(self._e, k) if final else lpc.frame_signal(self._e[: (k - 1) * C.HOP_SIZE + C.FRAME_SIZE], k)
        self._frames.append(frames.astype(np.float32))
        self._e = self._e[k * C.HOP_SIZE:]
        self._h_frame += k

    def _emit(self, final: bool) -> list[CodeChunk]:
        frames = np.concatenate(self._frames) if self._frames else np.zeros((0, C.FRAME_SIZE), np.float32)
        lsf = np.concatenate(self._lsf_codes) if self._lsf_codes else np.zeros((0, C.LPC_ORDER), np.int32)
        pitch = np.concatenate(self._pitch_codes) if self._pitch_codes else None
        out, f = [], self.frames_per_chunk
        s = 0
        while len(frames) - s >= f or (final and len(frames) > s):
            batch = frames[s: s + f]
            gq = self.model.gain_quantizer
            gain = None if gq is None else gq.encode_numpy(batch, self.model.residual_scale)
            if gain is not None:   # the cascade codes the residual over its coded gains
                batch = (batch / gq.per_sample(gq.decode_numpy(gain))).astype(np.float32)
            chunk_lsf = lsf[s: s + len(batch)]
            chunk_pitch = None if self.model.ltp is None else pitch[s: s + len(batch)]
            if self.pipeline:   # chunk k - 1's network first (one call in flight), then start chunk k's
                if self._inflight is not None:
                    out.append(self._join())
                self._inflight = (_Background(self.backend.encode_frames, batch, self.num_active),
                                  chunk_lsf, gain, chunk_pitch)
            else:
                codes = self.backend.encode_frames(batch, self.num_active)
                out.append(CodeChunk(chunk_lsf, codes, gain, chunk_pitch))
            s += len(batch)
        if final and self._inflight is not None:
            out.append(self._join())
        self._frames = [frames[s:]] if s < len(frames) else []
        self._lsf_codes = [lsf[s:]] if s < len(lsf) else []
        if pitch is not None:
            self._pitch_codes = [pitch[s:]] if s < len(pitch) else []
        return out

    def _join(self) -> CodeChunk:
        """The chunk whose network call is in flight, once the call is done."""
        call, lsf, gain, pitch = self._inflight
        self._inflight = None
        return CodeChunk(lsf, call.result(), gain, pitch)


class StreamDecoder:
    """Streaming decoder: `push(chunk)` -> float32 16 kHz samples of the chunk's hops.

    With `num_samples` given, the output stops there (the encoder's zero padding is dropped).
    `postfilter`: True (the default `lpc.Postfilter`), False / None (the synthesis as it is), or
    a `lpc.Postfilter` (fresh: it carries the stream's state).

    `stream(chunks)` is the pipelined form of `push` over an iterable: each chunk's network call
    runs on a worker thread while the previous chunk is synthesised and postfiltered (and the
    iterable produces the next one); the same samples, one block per chunk.
    """

    def __init__(self, model, num_samples: int | None = None, postfilter=True, backend=None):
        self.model = model
        self.backend = get_backend(model, backend)
        self.postfilter = make_postfilter(postfilter)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.emitted = 0
        self._lsf_prev = None
        self._tail = np.zeros(C.OVERLAP)
        self._syn = self._de = None
        self._ltp_hist = None if model.ltp is None else model.ltp.initial_history()   # decoded residual

    def push(self, chunk: CodeChunk) -> np.ndarray:
        prepared = self._prepare(chunk)
        return self._synthesize(prepared, self._network(chunk))

    def stream(self, chunks: Iterable[CodeChunk]) -> Iterator[np.ndarray]:
        """`push` of each chunk in turn, pipelined (see the class docstring). An error raised by
        the iterable or by a chunk's checks comes after the previous chunk's samples are yielded,
        as it would with `push`; at most one chunk's network call is in flight."""
        pending = None                           # (prepared chunk k - 1, its network call)
        it = iter(chunks)
        while True:
            try:
                chunk = next(it)                 # e.g. range decoding, beside chunk k - 1's network
                prepared = self._prepare(chunk)
            except StopIteration:
                break
            except Exception:
                if pending is not None:          # what push would have returned before this error
                    done, pending = pending, None
                    yield self._synthesize(done[0], done[1].result())
                raise
            frames = None if pending is None else pending[1].result()
            call = _Background(self._network, chunk)
            if pending is not None:              # chunk k - 1's numpy side beside chunk k's network
                yield self._synthesize(pending[0], frames)
            pending = (prepared, call)
        if pending is not None:
            yield self._synthesize(pending[0], pending[1].result())

    def _network(self, chunk: CodeChunk) -> np.ndarray:
        return self.backend.decode_frames(chunk.modules).astype(np.float64)

    def _prepare(self, chunk: CodeChunk):
        """Checks and the LSF side of a chunk (carries the previous hop's quantized LSFs)."""
        lsf_codes = np.asarray(chunk.lsf, np.int32)
        n = lsf_codes.shape[0]
        if lsf_codes.ndim != 2 or n == 0 or any(np.shape(m)[0] != n for m in chunk.modules) or not chunk.modules:
            raise ValueError(f"a chunk needs lsf codes [n >= 1, 16] and at least one module's codes [n, P, S]; "
                             f"got lsf {lsf_codes.shape}, modules {[np.shape(m) for m in chunk.modules]}")
        gq = self.model.gain_quantizer
        if (gq is None) != (chunk.gain is None):
            raise ValueError("this model codes per-sub-frame gains and the chunk has none" if gq is not None
                             else "the chunk carries gain codes, this model has no gain")
        gains = None if gq is None else gq.per_sample(gq.decode_numpy(np.asarray(chunk.gain)))
        ltp = self.model.ltp
        if (ltp is None) != (chunk.pitch is None):
            raise ValueError("this model codes long-term prediction and the chunk has no pitch codes" if ltp is not None
                             else "the chunk carries pitch codes, this model has no long-term predictor")
        pitch = None if ltp is None else ltp.check_codes(np.asarray(chunk.pitch).reshape(-1, 2), n * ltp.per_hop)
        if gains is not None and gains.shape[0] != n:
            raise ValueError(f"a chunk of {n} hops needs gain codes [{n}, {gq.subframes}]; got {np.shape(chunk.gain)}")
        lsf_q = _quantized_lsf(self.model, lsf_codes)
        a_sub = lpc.subframe_lpc(lsf_q, self._lsf_prev)
        self._lsf_prev = lsf_q[-1]
        return a_sub, gains, pitch

    def _synthesize(self, prepared, frames: np.ndarray) -> np.ndarray:
        """A chunk's decoded frames [n, 512] float64 -> its samples (overlap-add, pitch synthesis,
        1/A(z), postfilter, de-emphasis; carries their states)."""
        a_sub, gains, pitch = prepared
        ltp = self.model.ltp
        if gains is not None:
            frames *= gains
        e = frames[:, : C.HOP_SIZE].copy()
        e[0, : C.OVERLAP] += self._tail
        e[1:, : C.OVERLAP] += frames[:-1, C.HOP_SIZE:]
        self._tail = frames[-1, C.HOP_SIZE:].copy()
        e = e.reshape(-1)
        if ltp is not None:   # the pitch synthesis filter on the decoded residual
            e = ltp.synthesis_filter(self._ltp_hist, e, pitch)
            self._ltp_hist = np.concatenate([self._ltp_hist, e])[-len(self._ltp_hist):]
        y, self._syn = lpc.synthesis(e.reshape(-1), a_sub, self._syn)
        if self.postfilter is not None:
            y = self.postfilter(y, a_sub)
        y, self._de = lpc.deemphasis(y * self.model.signal_std, self._de)
        if self.num_samples is not None:
            y = y[: max(0, self.num_samples - self.emitted)]
        self.emitted += len(y)
        return y.astype(np.float32)


def encode_blocks(model, blocks: Iterable[np.ndarray], num_active: int | None = None,
                  frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK, backend=None, pipeline: bool = True) -> Codes:
    """16 kHz mono float blocks (any sizes) -> Codes: the whole signal through one StreamEncoder
    (pipelined unless `pipeline=False`: the same codes)."""
    enc = StreamEncoder(model, num_active, frames_per_chunk, backend, pipeline)
    chunks = [c for b in blocks for c in enc.push(b)]
    chunks += enc.finish()
    return Codes.join(chunks, enc.num_samples)


def encode(model, wav: np.ndarray, num_active: int | None = None,
           frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK, backend=None, pipeline: bool = True) -> Codes:
    """Float wav [N] at 16 kHz -> Codes (hard codes of the first `num_active` modules)."""
    wav = np.asarray(wav, np.float64)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"encode expects a non-empty 1-D 16 kHz signal; got shape {wav.shape}")
    return encode_blocks(model, [wav], num_active, frames_per_chunk, backend, pipeline)


def fit_entropy_tables(model, wavs: Sequence[np.ndarray], held_out_every: int = 5,
                       kinds: Sequence[str] = ("categorical", "context")) -> dict:
    """Encode 16 kHz training utterances with every module and fit the bitstream's tables on
    their codes (`codec_stream.fit_tables`, which stores them in `model.entropy_tables`)."""
    wavs = [np.asarray(w) for w in wavs]
    if not wavs or any(w.ndim != 1 or w.size == 0 for w in wavs):
        raise ValueError("fit_entropy_tables needs a non-empty list of non-empty 1-D 16 kHz signals")
    cs.check_kinds(kinds)
    codes = [encode(model, w, num_active=len(model.codec_modules)) for w in wavs]
    return cs.fit_tables(model, codes, held_out_every, kinds)


def make_postfilter(postfilter):
    """True -> a default `lpc.Postfilter`, False / None -> None, a Postfilter -> itself."""
    if postfilter is True:
        return Postfilter()
    if postfilter is None or postfilter is False:
        return None
    if isinstance(postfilter, Postfilter):
        return postfilter
    raise TypeError(f"postfilter must be True, False or an lpc.postfilter.Postfilter; got {type(postfilter).__name__}")


def decode(model, codes: Codes, frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK, postfilter=True,
           backend=None, pipeline: bool = True) -> np.ndarray:
    """Codes -> float32 wav [num_samples] at 16 kHz (any prefix of the modules); `postfilter`
    as in `StreamDecoder`; `pipeline`: `StreamDecoder.stream` (the same samples) or `push`."""
    dec = StreamDecoder(model, codes.num_samples, postfilter, backend)
    chunks = codes.chunks(frames_per_chunk)
    return np.concatenate(list(dec.stream(chunks)) if pipeline else [dec.push(c) for c in chunks])
