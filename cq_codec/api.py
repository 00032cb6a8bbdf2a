"""The Python API: `codec = cq_codec.load(path)`, then encode/decode codes or compress/decompress bytes.

    codec = cq_codec.load("model.keras")
    codes = codec.encode(wav, sr)            # Codes (LSF and module codes, num_samples)
    wav16 = codec.decode(codes)              # float32 [N] at 16 kHz
    data = codec.compress(wav, sr, bitrate=6.0)   # .nac bytes at the operating point nearest 6 kbps
    wav16, sr = codec.decompress(data)
    codec.postfilter = False                 # decode without the adaptive postfilter (default on)
    codec.pipeline = False                   # run the networks in turn with the numpy work (default:
                                             # beside it, on a worker thread; the same bytes and audio)
    codec.operating_points                  # [OperatingPoint(modules, kbps, codebooks), ...]

Files stream through `read_audio_blocks` (`cq_codec.data.audio`) + `compress_blocks` and `decompress_blocks` (one chunk
at a time: bounded memory).
Any input rate / channel count is downmixed (channel mean) and resampled to 16 kHz with a
streaming soxr resampler (the same code path for arrays and files, so both give the same bytes).
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from typing import BinaryIO, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

import constants as C
import cq_codec.models.cq  # noqa: F401  (registers the serializable classes for load / load_model)
import cq_codec.models.waveform
from cq_codec import backends, inference
from cq_codec.bitstream import codec_stream as cs
from cq_codec.bitstream.container import MAX_FRAMES_PER_CHUNK, NacReader, write_nac
from cq_codec.bitstream.identity import ModelIdentity
from cq_codec.codes import BitrateError, OperatingPoint, fitting_point  # noqa: F401  (public here too)
from cq_codec.data.audio import AudioInput, read_audio_blocks  # noqa: F401  (public here too)
from cq_codec.data.audio import array_blocks as _array_blocks
from cq_codec.waveform_api import WaveformCodecAPI, default_frames_per_chunk

__all__ = ["DEFAULT_MODEL_PATH", "WAVEFORM_MODEL_PATH", "OperatingPoint", "BitrateError", "Codec", "load", "load_model", "AudioInput", "read_audio_blocks", "frame_functions"]

DEFAULT_MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "default.keras")
# The shipped waveform codec (scripts/train_waveform.sh); `load("waveform_rvq")` / `--model waveform_rvq`.
WAVEFORM_MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "waveform_rvq.keras")


def _pretrained(path: str) -> str:
    """A bare name of a shipped model ("default", "waveform_rvq") -> its path; other paths as given."""
    if not os.path.exists(path) and os.sep not in path and not path.endswith(".keras"):
        candidate = os.path.join(os.path.dirname(DEFAULT_MODEL_PATH), path + ".keras")
        if os.path.isfile(candidate):
            return candidate
    return path
# "auto": LiteRT + XNNPACK (the tflite backend's NHWC export) where it serves the model, else
# keras. tflite encodes + decodes the shipped model 1.3-1.7x faster than keras on the 2-core
# machine (docs/DESIGN.md "Speed, sixth pass"); its codes equal keras's except where a latent lies
# within float rounding of a bin boundary (~3 in a million codes), and either decodes the other's.
# The golden-file tests pin keras. CQ_CODEC_BACKEND overrides the default (e.g. "keras").
DEFAULT_BACKEND = os.environ.get("CQ_CODEC_BACKEND") or "auto"
_DECODE_HOPS = inference.DEFAULT_FRAMES_PER_CHUNK   # hops per network call when decoding: bounds
                         # memory for any chunk size (a 4096-hop chunk in one call peaked at 2.1 GB)


def frame_functions(model, num_active: int | None = None):
    """`tf.function`s of the frame-level codec with input signatures (tensorflow-compression style):
    encode_frames(frames float32 [N, 512]) -> {"codes_i": int32 [N, P_i, S_i]} and
    decode_frames(codes_0, ..., codes_{k-1}) -> {"frames": float32 [N, 512]}: the model's own
    traced functions (`CQCodec.frame_functions`), which the streaming codec runs too."""
    return model.frame_functions(num_active or len(model.codec_modules))


class Codec:
    """A loaded CQ codec with its entropy tables. `frames_per_chunk` hops per `.nac` chunk.
    `pipeline` (default True): each chunk's network call runs on a worker thread beside the numpy
    work of its neighbours (`inference` module docstring); False runs them in turn. Either way
    the codes, bytes and audio are the same."""

    def __init__(self, model, name: str = "cq_codec",
                 frames_per_chunk: int = inference.DEFAULT_FRAMES_PER_CHUNK, postfilter: bool = True,
                 backend: str = DEFAULT_BACKEND, pipeline: bool = True):
        self.model, self.name = model, str(name)
        self.pipeline = bool(pipeline)
        self.backend = backend    # "auto", "keras", "tflite", "fast" or "bf16" (cq_codec.backends); codes of any decode with all
        if not isinstance(postfilter, bool):
            raise TypeError(f"postfilter must be True or False; got {postfilter!r}")
        self.postfilter = postfilter  # decoder-side only: the .nac bytes do not depend on it
        fpc = frames_per_chunk
        if isinstance(fpc, bool) or not isinstance(fpc, (int, np.integer)) or not 1 <= fpc <= MAX_FRAMES_PER_CHUNK:
            raise ValueError(f"frames_per_chunk must be an int in [1, {MAX_FRAMES_PER_CHUNK}] "
                             f"(hops of 30 ms per .nac chunk), got {fpc!r}")
        self.frames_per_chunk = int(fpc)
        self.identity = ModelIdentity(model)    # what .nac headers record of the model
        self._fns = None

    @property
    def sha256(self) -> str:
        """The model's identity the writer records (`bitstream.identity.model_id`)."""
        return self.identity.current

    @property
    def backend(self) -> str:
        """The frame codec's runtime in use: "keras" (TensorFlow), "tflite" (LiteRT + XNNPACK),
        "fast" (keras, the encoders' output convolutions laid out for oneDNN) or "bf16"; "auto"
        (the default) resolves to tflite or keras when set."""
        return self._backend.name

    @backend.setter
    def backend(self, name: str) -> None:
        if isinstance(name, str) and name not in backends.BACKENDS:
            raise ValueError(f"unknown backend {name!r}; valid: {', '.join(backends.BACKENDS)}")
        self._backend = backends.get_backend(self.model, name)

    # ------------------------------------------------------------------ operating points
    @property
    def num_modules(self) -> int:
        return len(self.model.codec_modules)

    @property
    def has_rvq(self) -> bool:
        """True when some module's quantizer is an RVQ (then its codebook counts are operating points too)."""
        return any(cs._is_rvq(m) for m in self.model.codec_modules)

    @property
    def operating_points(self) -> list[OperatingPoint]:
        """Every combination of modules and, for RVQ modules, codebooks per module, with its
        expected kbps from the entropy tables (`codec_stream.operating_combinations`). Without RVQ
        modules: one point per number of modules, as before."""
        return [OperatingPoint(k, kbps, combo) for k, combo, kbps in cs.operating_combinations(self.model)]

    def _full(self, k: int) -> tuple:
        return tuple(m.quantizer.num_streams for m in self.model.codec_modules[:k])

    def modules_for_bitrate(self, bitrate_kbps: float | None) -> int:
        """The operating point (number of modules, all codebooks) nearest `bitrate_kbps`; None: all modules."""
        if bitrate_kbps is None:
            return self.num_modules
        kbps = float(bitrate_kbps)
        if not kbps > 0:
            raise ValueError(f"bitrate must be a positive number of kbps, got {bitrate_kbps!r}")
        full = [p for p in self.operating_points if p.codebooks == self._full(p.modules)]
        return min(full, key=lambda p: (abs(p.kbps - kbps), p.modules)).modules

    def point_for_bitrate(self, bitrate_kbps: float | None) -> OperatingPoint:
        """The operating point `--bitrate` selects. With RVQ modules: the combination with the
        highest expected kbps that fits the request (BitrateError when none does). Without: the
        number of modules nearest the request (the CQ codec's rule before RVQ points existed).
        None: every module with every codebook."""
        points = self.operating_points
        if bitrate_kbps is None:
            return next(p for p in points if p.modules == self.num_modules and p.codebooks == self._full(self.num_modules))
        if self.has_rvq:
            return fitting_point(points, bitrate_kbps)
        n = self.modules_for_bitrate(bitrate_kbps)
        return next(p for p in points if p.modules == n)

    def _use_codebooks(self, codebooks):
        """Context manager: the RVQ modules' `num_active_codebooks` set to `codebooks` (per module)."""

        @contextlib.contextmanager
        def cm():
            saved = [getattr(m.quantizer, "num_active_codebooks", None) for m in self.model.codec_modules]
            try:
                for m, c in zip(self.model.codec_modules, codebooks or ()):
                    if cs._is_rvq(m):
                        m.quantizer.num_active_codebooks = int(c)
                    elif c != m.quantizer.num_streams:
                        raise ValueError(f"module {m.name} is not an RVQ: it codes all {m.quantizer.num_streams} "
                                         f"streams, not {c}")
                yield
            finally:
                for m, v in zip(self.model.codec_modules, saved):
                    if v is not None:
                        m.quantizer.num_active_codebooks = v
        return cm()

    def _resolve(self, bitrate, num_modules, codebooks) -> tuple[int, tuple]:
        if codebooks is not None:
            codebooks = tuple(int(c) for c in codebooks)
            if not 1 <= len(codebooks) <= self.num_modules:
                raise ValueError(f"codebooks needs one count per module used (1..{self.num_modules} modules); got {codebooks}")
            for m, c in zip(self.model.codec_modules, codebooks):
                if not 1 <= c <= m.quantizer.num_streams:
                    raise ValueError(f"module {m.name}: {c} codebooks, it has 1..{m.quantizer.num_streams}")
            return len(codebooks), codebooks
        if num_modules:
            return int(num_modules), self._full(int(num_modules))
        p = self.point_for_bitrate(bitrate)
        return p.modules, tuple(p.codebooks)

    # ------------------------------------------------------------------ codes
    def encode(self, wav, sr: int, num_modules: int | None = None, codebooks=None) -> inference.Codes:
        """wav [N] or [N, channels] at `sr` -> Codes (16 kHz hops); `codebooks`: per module used
        (RVQ modules: their first c codebooks)."""
        n, cb = self._resolve(None, num_modules or (None if codebooks else self.num_modules), codebooks)
        with self._use_codebooks(cb):
            return inference.encode_blocks(self.model, _array_blocks(wav, sr), n, self.frames_per_chunk,
                                           self._backend, self.pipeline)

    def decode(self, codes: inference.Codes) -> np.ndarray:
        """Codes -> float32 wav [num_samples] at 16 kHz."""
        return inference.decode(self.model, codes, self.frames_per_chunk, self.postfilter, self._backend,
                                self.pipeline)

    # ------------------------------------------------------------------ bytes
    def compress_blocks(self, blocks: Iterable[np.ndarray], bitrate: float | None = None,
                        num_modules: int | None = None, codebooks=None) -> bytes:
        """16 kHz mono blocks -> `.nac` bytes. Holds only the compressed chunks in memory.
        The operating point: `codebooks` (per module used), else `num_modules` (all codebooks),
        else `point_for_bitrate(bitrate)`. The header records the codebooks of cut RVQ modules."""
        n, cb = self._resolve(bitrate, num_modules, codebooks)
        models = cs.entropy_models(self.model)
        with self._use_codebooks(cb):
            enc = inference.StreamEncoder(self.model, n, self.frames_per_chunk, self._backend, self.pipeline)
            payloads = [cs.encode_chunk(c, models) for b in blocks for c in enc.push(b)]
            payloads += [cs.encode_chunk(c, models) for c in enc.finish()]
        kbps = sum(len(p) for p in payloads) * 8 / (enc.num_samples / C.SAMPLE_RATE) / C.BITS_PER_KBIT
        full = self._full(n)
        header_cb = None if cb == full else [c if c != f else 0 for c, f in zip(cb, full)]
        meta = cs.stream_metadata(self.model, model_name=self.name, num_samples=enc.num_samples, num_active=n,
                                  frames_per_chunk=self.frames_per_chunk, sha256=self.sha256, codebooks=header_cb)
        return write_nac(meta, payloads, kbps)

    def compress(self, wav, sr: int, bitrate: float | None = None, num_modules: int | None = None,
                 codebooks=None) -> bytes:
        """wav [N] or [N, channels] at `sr` -> `.nac` bytes (operating point: see `compress_blocks`)."""
        return self.compress_blocks(_array_blocks(wav, sr), bitrate, num_modules, codebooks)

    def decompress_blocks(self, fileobj: BinaryIO) -> tuple[dict, Iterator[np.ndarray]]:
        """A `.nac` stream (or a `NacReader` of one) -> (metadata, generator of float32 16 kHz
        blocks: one per chunk, or per 250 hops of a longer chunk).

        The header, metadata, model identity and (for a seekable stream) the file's size against
        the hops it declares are checked before this returns; a damaged chunk, or one whose size
        cannot hold its hops, raises `NacError` when the generator reaches it, before decoding it."""
        reader = fileobj if isinstance(fileobj, NacReader) else NacReader(fileobj)
        info = cs.check_metadata(reader.metadata, self.model, self.identity.for_version(reader.header.version))
        models = cs.entropy_models(self.model)
        bounds = cs.check_stream_size(reader.bytes_left, info, models)   # before any decoding work

        def pieces():
            for i, data in enumerate(reader):
                n = min(info["frames_per_chunk"], info["num_frames"] - i * info["frames_per_chunk"])
                bounds.check(len(data), n, f"chunk {i}")
                chunk = cs.decode_chunk(data, n, info["num_active"], models, info["layout"], info.get("codebooks"))
                for s in range(0, n, _DECODE_HOPS):    # the network sees <= 250 hops at a time
                    yield chunk.hops(s, s + _DECODE_HOPS)

        def blocks():
            dec = inference.StreamDecoder(self.model, info["num_samples"], self.postfilter, self._backend)
            if self.pipeline:     # piece k's network beside piece k - 1's synthesis and k + 1's range decoding
                yield from dec.stream(pieces())
            else:
                for piece in pieces():
                    yield dec.push(piece)
        return reader.metadata, blocks()

    def decompress(self, data: bytes) -> tuple[np.ndarray, int]:
        """`.nac` bytes -> (float32 wav [N], 16000)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        _, blocks = self.decompress_blocks(io.BytesIO(bytes(data)))
        return np.concatenate(list(blocks)), C.SAMPLE_RATE

    # ------------------------------------------------------------------ graph functions
    @property
    def frame_functions(self):
        """(encode_frames, decode_frames) `tf.function`s with input signatures:
        frames float32 [N, 512] -> {"codes_i": int32 [N, P_i, S_i]}; codes_0.. -> frames [N, 512]."""
        if self._fns is None:
            self._fns = frame_functions(self.model)
        return self._fns

    def export_saved_model(self, directory: str) -> str:
        """Writes a SavedModel whose signatures are the frame-level codec ("encode_frames",
        "decode_frames"). Returns `directory`."""
        enc, dec = self.frame_functions
        module = tf.Module()
        module.model = self.model
        module.encode_frames, module.decode_frames = enc, dec
        tf.saved_model.save(module, str(directory), signatures={
            "encode_frames": enc.get_concrete_function(), "decode_frames": dec.get_concrete_function()})
        return str(directory)


def load(path: str | None = None, frames_per_chunk: int = inference.DEFAULT_FRAMES_PER_CHUNK,
         postfilter: bool = True, backend: str = DEFAULT_BACKEND) -> Codec:
    """Load a `.keras` CQ model (with entropy tables) as a `Codec`; None: the default model.
    `postfilter`: decode through the adaptive postfilter (`lpc.postfilter`; no effect on the bytes).
    A waveform model (cq_codec.models.waveform) loads as a `cq_codec.waveform_api.WaveformCodecAPI`
    (same methods; its chunks default to whole latent frames). A shipped model may be named
    without its path: "default", "waveform_rvq".
    `backend`: "auto" (default: tflite where it serves the model, else keras; `DEFAULT_BACKEND`),
    "keras", "tflite" (`cq_codec.backends`: LiteRT + XNNPACK; the first use of an operating point
    converts it, a few seconds, then cached on disk), "fast" (keras with the encoders' output
    convolutions laid out for oneDNN) or "bf16". Codes of every backend decode with every other;
    tflite's and fast's equal keras's except in rare rounding cases."""
    path = DEFAULT_MODEL_PATH if path is None else _pretrained(str(path))
    if not os.path.isfile(path):
        hint = (" (the shipped default model is missing: reinstall cq-codec, re-train it with "
                "scripts/train_default.sh, or pass a trained model with --model PATH / load(path))"
                if os.path.abspath(path) == os.path.abspath(DEFAULT_MODEL_PATH) else "")
        raise FileNotFoundError(f"model file {path!r} not found{hint}")
    if not zipfile.is_zipfile(path):     # keras says "File not found" for a truncated archive
        raise ValueError(f"cannot load model {path!r}: not a .keras (zip) archive; truncated or damaged?")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad archive
        raise ValueError(f"cannot load model {path!r}: {type(e).__name__}: {e}") from e
    if isinstance(model, cq_codec.models.waveform.WaveformCodec):
        if backend not in ("keras", "auto"):
            raise ValueError(f"backend {backend!r} serves CQ models only; {path!r} is a waveform codec (use keras)")
        fpc = frames_per_chunk
        if fpc == inference.DEFAULT_FRAMES_PER_CHUNK:     # CQ's default: the waveform codec's own
            fpc = default_frames_per_chunk(model.hop)
        return WaveformCodecAPI(model, name=os.path.splitext(os.path.basename(path))[0], frames_per_chunk=fpc)
    cs.entropy_models(model)     # fail now, with a clear message, if the tables are missing
    name = os.path.splitext(os.path.basename(path))[0]
    return Codec(model, name=name, frames_per_chunk=frames_per_chunk, postfilter=postfilter, backend=backend)


def load_model(path: str | None = None):
    """The model of a `.keras` file (None: the shipped default model), with clear errors for a
    missing or unreadable file; the entropy tables are not checked (see `load`)."""
    path = DEFAULT_MODEL_PATH if path is None else str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad archive
        raise ValueError(f"cannot load model {path!r}: {type(e).__name__}: {e}") from e
