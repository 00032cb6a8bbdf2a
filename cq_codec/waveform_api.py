"""The waveform codec (`cq_codec.models.waveform.WaveformCodec`) behind the same API as CQ:
`cq_codec.load(path)` returns a `WaveformCodecAPI` for a waveform model, with encode / decode /
compress / decompress / operating_points, streamed chunk by chunk.

One file of weights, many bitrates: the RVQ was trained with quantizer dropout, so any number n
of its N codebooks (the first n) is a valid code. `operating_points` lists (n, expected kbps)
from the entropy tables fitted after training; `compress(..., bitrate=K)` picks the largest n
whose expected rate is at most K (the cheapest n when none is: the message says so, and a
bitrate below that raises `BitrateError`). The `.nac` header records n (its per-module codebook
count), so decoding needs nothing but the file and the model.

Streaming. Every convolution is causal, so the codes of latent frame t depend on samples
< (t + 1) * hop and the decoded samples of frame t on frames <= t. A chunk is processed with the
last `encoder_context` samples (decoder: `decoder_context` latent frames) before it prepended,
which covers the receptive field; the outputs past the prepended part then equal the whole-file
pass up to float rounding (the convolutions run on other lengths; tests/test_waveform.py states
the tolerance). The first chunk has nothing prepended, exactly like the whole-file pass.

Payload of one chunk (stream format 2): the chunk's codes `[frames, n]` range coded with the
first n streams' tables (stream by stream). A chunk covers `frames_per_chunk` 30 ms hops of
audio (the container's unit), i.e. frames_per_chunk * 480 / hop latent frames; the default is
the largest such count <= 250 hops for which that is whole (248 for hop 128).
"""

from __future__ import annotations

import io
import math
from typing import BinaryIO, Iterable, Iterator

import numpy as np

import constants as C
from cq_codec.bitstream import codec_stream as cs
from cq_codec.bitstream import entropy
from cq_codec.bitstream.codec_stream import ModelMismatchError, _int, prefix_model
from cq_codec.bitstream.container import (MAX_FRAMES_PER_CHUNK, MAX_NUM_SAMPLES, VERSION, NacFormatError, NacReader,
                                          build_metadata, stream_counts, write_nac)
from cq_codec.bitstream.identity import ModelIdentity
from cq_codec.codes import BitrateError, OperatingPoint, fitting_point
from cq_codec.data.audio import array_blocks
from cq_codec.models.waveform import TABLES_FORMAT, fit_entropy_tables, pad_to_hop

__all__ = ["WAVE_STREAM_FORMAT", "BitrateError", "WaveformCodecAPI", "OperatingPoint",
           "default_frames_per_chunk", "fit_entropy_tables"]

WAVE_STREAM_FORMAT = 2


def default_frames_per_chunk(hop: int, target: int = 250) -> int:
    """Largest hop count <= target (>= the step) whose samples are whole latent frames."""
    step = hop // math.gcd(C.HOP_SIZE, hop)
    return max(step, target // step * step)


class WaveStreamEncoder:
    """16 kHz blocks in -> codes `[frames, n]` per chunk out, with the receptive field carried."""

    def __init__(self, model, num_codebooks: int, chunk_frames: int):
        self.model, self.n, self.chunk_frames = model, int(num_codebooks), int(chunk_frames)
        self.hop, self.context = model.hop, model.encoder_context
        self.history = np.zeros(0, np.float32)     # empty before the first chunk
        self.pending = np.zeros(0, np.float32)
        self.num_samples = 0

    def _code(self, samples: np.ndarray) -> np.ndarray:
        x = np.concatenate([self.history, samples]).astype(np.float32)
        codes = np.asarray(self.model.encode_codes(x[None], num_stages=self.n)[0])
        skip = len(self.history) // self.hop
        self.history = x[-self.context:] if self.context else np.zeros(0, np.float32)
        return codes[skip:]

    def push(self, block) -> list[np.ndarray]:
        block = np.asarray(block, np.float32).reshape(-1)
        self.num_samples += block.size
        self.pending = np.concatenate([self.pending, block])
        size = self.chunk_frames * self.hop
        out = []
        while len(self.pending) >= size:
            out.append(self._code(self.pending[:size]))
            self.pending = self.pending[size:]
        return out

    def finish(self) -> list[np.ndarray]:
        if self.pending.size == 0 and self.num_samples > 0:
            return []
        last = pad_to_hop(self.pending, self.hop)
        self.pending = np.zeros(0, np.float32)
        return [self._code(last)]


class WaveStreamDecoder:
    """Codes `[frames, n]` per chunk in -> float32 16 kHz samples out (the last cut to num_samples)."""

    def __init__(self, model, num_samples: int):
        self.model, self.num_samples = model, int(num_samples)
        self.context = model.decoder_context
        self.history = None            # quantized latents of the last `context` frames
        self.done = 0

    def push(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, np.int32)
        q = np.asarray(self.model.codes_to_latents(codes[None]))
        skip = 0
        if self.history is not None and self.context:
            skip = self.history.shape[1]
            q = np.concatenate([self.history, q], axis=1)
        y = np.asarray(self.model.latents_to_audio(q))[0, skip * self.model.hop:]
        self.history = q[:, -self.context:] if self.context else None
        y = y[: max(0, self.num_samples - self.done)]
        self.done += len(y)
        return y.astype(np.float32)


class WaveformCodecAPI:
    """A loaded waveform codec with its entropy tables (the `Codec` interface of cq_codec.api)."""

    kind = "waveform"

    def __init__(self, model, name: str = "waveform", frames_per_chunk: int | None = None, postfilter: bool = False):
        self.model, self.name = model, str(name)
        self.postfilter = False    # the waveform decoder has no postfilter (accepted, ignored)
        fpc = default_frames_per_chunk(model.hop) if frames_per_chunk is None else int(frames_per_chunk)
        if fpc < 1 or (fpc * C.HOP_SIZE) % model.hop:
            raise ValueError(f"frames_per_chunk {fpc}: a chunk of {fpc} x {C.HOP_SIZE} samples must be whole "
                             f"latent frames of {model.hop} samples (use a multiple of "
                             f"{model.hop // math.gcd(C.HOP_SIZE, model.hop)})")
        self.frames_per_chunk = fpc
        self.chunk_frames = fpc * C.HOP_SIZE // model.hop
        self.identity = ModelIdentity(model)    # what .nac headers record of the model
        self.sha256 = self.identity.current
        self._tables()     # fail now, with a clear message, if the tables are missing

    # ------------------------------------------------------------------ tables / points
    def _tables(self):
        t = getattr(self.model, "entropy_tables", None)
        if not t:
            raise ValueError("this waveform model has no entropy tables: run "
                             "cq_codec.waveform_api.fit_entropy_tables(model, wavs) after training")
        cached = self.__dict__.get("_cache")
        if cached is None:
            if t.get("format") != TABLES_FORMAT or t.get("version") != 1:
                raise ValueError(f"unsupported waveform entropy tables (format {t.get('format')!r})")
            m = entropy.model_from_dict(dict(t["model"]))
            if list(m.alphabet_sizes) != self.model.codebook_sizes:
                raise ValueError("the entropy tables were fitted for other codebooks than this model's")
            cached = self.__dict__["_cache"] = (m, [float(b) for b in t["bits_per_frame"]])
        return cached

    @property
    def num_modules(self) -> int:
        """Operating-point count under the CQ API's name (loops over `1..num_modules` and
        `compress(num_modules=n)` work unchanged): here the number of codebooks."""
        return self.model.num_codebooks

    has_rvq = True

    @property
    def num_codebooks(self) -> int:
        return self.model.num_codebooks

    @property
    def operating_points(self) -> list[OperatingPoint]:
        """Every codebook count n = 1..N with its expected kbps (entropy-coded, from the tables)."""
        bpf = self._tables()[1]
        fps = self.model.frames_per_second
        return [OperatingPoint(1, float(sum(bpf[:n]) * fps / C.BITS_PER_KBIT), (n,)) for n in range(1, len(bpf) + 1)]

    def point_for_bitrate(self, bitrate_kbps: float | None) -> OperatingPoint:
        """The operating point with the highest expected rate <= bitrate_kbps; None: all codebooks.

        Raises BitrateError when even one codebook needs more (naming the cheapest point)."""
        points = self.operating_points
        if bitrate_kbps is None:
            return points[-1]
        return fitting_point(points, bitrate_kbps)

    def modules_for_bitrate(self, bitrate_kbps: float | None) -> int:
        """The codebook count `point_for_bitrate` picks (the CQ API's name)."""
        return self.point_for_bitrate(bitrate_kbps).codebooks[0]

    def _point(self, bitrate, num_codebooks) -> int:
        if num_codebooks is not None:
            n = num_codebooks
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.num_codebooks:
                raise ValueError(f"num_codebooks must be an int in 1..{self.num_codebooks}, got {num_codebooks!r}")
            return int(n)
        return self.point_for_bitrate(bitrate).codebooks[0]

    # ------------------------------------------------------------------ codes
    def encode(self, wav, sr: int, num_codebooks: int | None = None, bitrate: float | None = None) -> np.ndarray:
        """wav [N] or [N, channels] at sr -> int32 codes [ceil(N16k / hop), n]."""
        n = self._point(bitrate, num_codebooks)
        enc = WaveStreamEncoder(self.model, n, self.chunk_frames)
        chunks = [c for b in array_blocks(wav, sr) for c in enc.push(b)] + enc.finish()
        return np.concatenate(chunks)

    def decode(self, codes, num_samples: int | None = None) -> np.ndarray:
        """codes [T, n] -> float32 wav [num_samples or T * hop] at 16 kHz (streamed per chunk)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(f"codes must be [frames, n] with 1 <= n <= {self.num_codebooks}, got {codes.shape}")
        dec = WaveStreamDecoder(self.model, num_samples or codes.shape[0] * self.model.hop)
        step = self.chunk_frames
        return np.concatenate([dec.push(codes[s:s + step]) for s in range(0, len(codes), step)])

    # ------------------------------------------------------------------ bytes
    def compress_blocks(self, blocks: Iterable[np.ndarray], bitrate: float | None = None,
                        num_modules: int | None = None, num_codebooks: int | None = None, codebooks=None) -> bytes:
        """16 kHz mono blocks -> `.nac` bytes with n codebooks (num_codebooks, else the point for
        `bitrate`; `num_modules` is accepted as a synonym of num_codebooks, the CQ API's name)."""
        if codebooks is not None:          # the CQ API's per-module form: (n,)
            codebooks = tuple(codebooks)
            if len(codebooks) != 1:
                raise ValueError(f"the waveform codec has one module: codebooks must be (n,), got {codebooks}")
            num_codebooks = int(codebooks[0])
        n = self._point(bitrate, num_codebooks if num_codebooks is not None else num_modules)
        table = prefix_model(self._tables()[0], n)
        enc = WaveStreamEncoder(self.model, n, self.chunk_frames)
        payloads = [entropy.encode(c, table) for b in blocks for c in enc.push(b)]
        payloads += [entropy.encode(c, table) for c in enc.finish()]
        kbps = sum(len(p) for p in payloads) * 8 / (max(enc.num_samples, 1) / C.SAMPLE_RATE) / C.BITS_PER_KBIT
        meta = build_metadata(model_name=self.name, model_sha256=self.sha256, num_samples=max(enc.num_samples, 1),
                              num_modules=1, codebooks=[n], frames_per_chunk=self.frames_per_chunk,
                              stream_format=WAVE_STREAM_FORMAT)
        return write_nac(meta, payloads, kbps)

    def compress(self, wav, sr: int, bitrate: float | None = None, num_modules: int | None = None,
                 num_codebooks: int | None = None, codebooks=None) -> bytes:
        """wav at sr -> `.nac` bytes with n codebooks (num_codebooks, or codebooks=(n,), or the
        point for `bitrate`)."""
        return self.compress_blocks(array_blocks(wav, sr), bitrate, num_modules, num_codebooks, codebooks)

    def check_metadata(self, meta: dict, version: int = VERSION) -> dict:
        if meta.get("stream_format") != WAVE_STREAM_FORMAT:
            raise NacFormatError(f"stream format {meta.get('stream_format')!r} is not the waveform codec's "
                                 f"({WAVE_STREAM_FORMAT}); decode it with the model that wrote it")
        info = meta.get("model") or {}
        ours = self.identity.for_version(version)
        if not isinstance(info.get("sha256"), str) or not ours.startswith(info["sha256"]):
            raise ModelMismatchError(f"model mismatch: the file was written with model {info.get('name')!r} "
                                     f"(sha256 {str(info.get('sha256'))[:16]}...), this model's sha256 is "
                                     f"{ours[:16]}...; decode it with the model that encoded it (--model PATH)")
        codebooks = meta.get("codebooks") or [0]
        if (not isinstance(codebooks, list) or len(codebooks) != 1 or isinstance(codebooks[0], bool)
                or not isinstance(codebooks[0], int) or not 1 <= codebooks[0] <= self.num_codebooks):
            raise NacFormatError(f"the file's codebook counts {codebooks!r} do not fit this model "
                                 f"(one module of 1..{self.num_codebooks} codebooks)")
        num_samples = _int(meta, "num_samples", 1, MAX_NUM_SAMPLES)      # version-1 files: any JSON
        fpc = _int(meta, "frames_per_chunk", 1, MAX_FRAMES_PER_CHUNK)
        if _int(meta, "num_chunks", 1, MAX_NUM_SAMPLES) != stream_counts(num_samples, fpc)[1]:
            raise NacFormatError(f"inconsistent counts: {num_samples} samples, {fpc} frames per chunk, "
                                 f"{meta['num_chunks']} chunks")
        if (fpc * C.HOP_SIZE) % self.model.hop:
            raise NacFormatError(f"frames_per_chunk {fpc} is not whole latent frames of {self.model.hop} samples")
        return {"num_samples": meta["num_samples"], "num_codebooks": codebooks[0], "num_chunks": meta["num_chunks"],
                "chunk_frames": fpc * C.HOP_SIZE // self.model.hop}

    def decompress_blocks(self, fileobj: BinaryIO) -> tuple[dict, Iterator[np.ndarray]]:
        """A `.nac` stream (or a `NacReader` of one) -> (metadata, generator of float32 16 kHz
        blocks, one per chunk); header, model identity and codebook count checked first."""
        reader = fileobj if isinstance(fileobj, NacReader) else NacReader(fileobj)
        info = self.check_metadata(reader.metadata, reader.header.version)
        table = prefix_model(self._tables()[0], info["num_codebooks"])
        total_frames = -(-info["num_samples"] // self.model.hop)
        # Hard limits before any decoding work (as the CQ decoder): payload bytes against frames.
        bounds = cs.PayloadBounds(*cs._table_bits(table))
        n, cf = info["num_chunks"], info["chunk_frames"]
        need = (n - 1) * (8 + bounds.min_bytes(cf)) + 8 + bounds.min_bytes(total_frames - (n - 1) * cf)
        if reader.bytes_left is not None and reader.bytes_left < need:
            raise NacFormatError(f"the file declares {total_frames} frames in {n} chunk(s), which need at least "
                                 f"{need} bytes under the model's tables; only {reader.bytes_left} follow the "
                                 "header: truncated, damaged or hostile file")

        def blocks():
            dec = WaveStreamDecoder(self.model, info["num_samples"])
            for i, data in enumerate(reader):
                frames = min(info["chunk_frames"], total_frames - i * info["chunk_frames"])
                bounds.check(len(data), frames, f"chunk {i}")
                try:
                    codes = entropy.decode(data, frames, table)
                except ValueError as e:
                    raise NacFormatError(f"chunk {i}: {e}") from e
                yield dec.push(codes)
        return reader.metadata, blocks()

    def decompress(self, data: bytes) -> tuple[np.ndarray, int]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        _, blocks = self.decompress_blocks(io.BytesIO(bytes(data)))
        return np.concatenate(list(blocks)), C.SAMPLE_RATE
