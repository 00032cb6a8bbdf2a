"""Traditional speech codecs, run for real, to compare cq-codec against.

Every baseline takes a float32 16 kHz mono signal `[N]` and returns `(decoded [N] float32,
num_bytes)`, where `num_bytes` is the real coded payload (what the codec itself emits, without
file containers). The input gets `delay_samples` zeros appended (and is zero padded to whole
20 ms frames) so the codec's algorithmic delay is flushed; the decoded signal is shifted back by
that delay and trimmed to N samples, so it lines up with the input (`metrics.score` still
estimates any residual delay: measured within 1 sample). `num_bytes` includes the flush frames:
what coding the whole clip really costs. After each call, `last_stats` holds `payload_bytes`
and `file_bytes` (what a file on disk would take).

- Opus (libopus through `opuslib`): VOIP application, 20 ms frames, bitrate set with the
  encoder ctl (VBR, the libopus default; complexity 10). Packet bytes are counted exactly, with
  no container (a real transport needs a few bytes of framing per packet on top).
- AMR-WB (3GPP TS 26.190), encoded with libvo-amrwbenc through ctypes, decoded with ffmpeg.
  `num_bytes` counts the storage-format frames (1 header byte + the mode's bits padded to whole
  bytes, per 20 ms), without the 9-byte `#!AMR-WB\\n` file magic; so 8.85 kbps measures 9.6.
- Speex wideband through the `speexenc` / `speexdec` command-line tools (Debian `speex`),
  constant bitrate by quality level. `num_bytes` is the Ogg file minus its container: the sum of
  the audio packets, without the header packets and the Ogg page headers. speexdec removes the
  codec lookahead only when the audio spans more than one Ogg page; we detect the one-page case
  from the page flags and remove it ourselves.

Each raises `BaselineUnavailableError` naming the Debian package when its library or binary is
missing.
"""

from __future__ import annotations

import abc
import ctypes
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from constants import SAMPLE_RATE

__all__ = [
    "AMRWB_MODES_KBPS",
    "AmrWbBaseline",
    "Baseline",
    "BaselineUnavailableError",
    "OpusBaseline",
    "SPEEX_WB_QUALITY_KBPS",
    "SpeexBaseline",
    "available_baselines",
    "get_baseline",
    "ogg_packets",
    "ogg_pages",
]

FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms

# AMR-WB modes 0..8 (3GPP TS 26.201) and their storage-format frame sizes incl. the header byte.
AMRWB_MODES_KBPS = (6.60, 8.85, 12.65, 14.25, 15.85, 18.25, 19.85, 23.05, 23.85)
AMRWB_MAGIC = b"#!AMR-WB\n"
AMRWB_LIBRARY = "libvo-amrwbenc.so.0"

# Speex wideband: nominal bitrate (kbps) of each quality level (Speex manual, table 9.2).
SPEEX_WB_QUALITY_KBPS = {0: 3.95, 1: 5.75, 2: 7.75, 3: 9.8, 4: 12.8, 5: 16.8, 6: 20.6,
                         7: 23.8, 8: 27.8, 9: 34.2, 10: 42.2}


class BaselineUnavailableError(RuntimeError):
    """The library or program a baseline codec needs is not installed."""


def _require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BaselineUnavailableError(
            f"'{name}' not found on PATH: install the Debian package with "
            f"`apt-get install {package}`")
    return path


def _check_wav(wav) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"wav must be a 1-D mono signal [N], got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError("wav is empty")
    if not np.issubdtype(wav.dtype, np.floating):
        raise TypeError(f"wav must be float in [-1, 1], got dtype {wav.dtype}")
    if not np.all(np.isfinite(wav)):
        raise ValueError("wav contains NaN or infinite samples")
    return wav.astype(np.float32)


def _to_int16(wav: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wav, -1.0, 32767.0 / 32768.0) * 32768.0).astype(np.int16)


def _pad_frames(wav: np.ndarray, extra: int) -> np.ndarray:
    """Append `extra` zeros (to flush the codec delay), then zero pad to whole 20 ms frames."""
    total = wav.size + extra
    total = -(-total // FRAME_SAMPLES) * FRAME_SAMPLES
    return np.concatenate([wav, np.zeros(total - wav.size, np.float32)])


class Baseline(abc.ABC):
    """A traditional codec: `encode_decode(wav [N]) -> (decoded [N] float32, num_bytes)`."""

    name: str = ""
    bitrate_kbps: float = 0.0
    delay_samples: int = 0  # algorithmic delay: zeros appended to flush it, then removed

    def __init__(self) -> None:
        self.last_stats: dict = {}

    def encode_decode(self, wav) -> tuple[np.ndarray, int]:
        """Code a float32 16 kHz mono `[N]` signal; return the decoded `[N]` and payload bytes."""
        wav = _check_wav(wav)
        padded = _pad_frames(wav, self.delay_samples)
        decoded, payload, file_bytes = self._run(padded)
        if decoded.size < wav.size:
            decoded = np.concatenate([decoded, np.zeros(wav.size - decoded.size, np.float32)])
        self.last_stats = {"payload_bytes": payload, "file_bytes": file_bytes}
        return decoded[:wav.size].astype(np.float32), payload

    @abc.abstractmethod
    def _run(self, padded: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Code whole frames `[k * 320]` (the input plus `delay_samples` zeros, rounded up).

        Returns:
            (decoded, delay removed so that decoded[n] matches padded[n]; payload bytes;
            file bytes).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.bitrate_kbps} kbps)"


class OpusBaseline(Baseline):
    """Opus through libopus (`opuslib`), VOIP application, 20 ms frames, VBR."""

    name = "opus"

    def __init__(self, bitrate_kbps: float, complexity: int = 10) -> None:
        super().__init__()
        if not 6.0 <= bitrate_kbps <= 510.0:
            raise ValueError(f"Opus bitrate must be in [6, 510] kbps, got {bitrate_kbps}")
        try:
            import opuslib  # loads libopus.so.0 at import
        except Exception as err:  # opuslib raises a bare Exception when libopus is missing
            raise BaselineUnavailableError(
                f"Opus needs libopus and opuslib ({err}): `apt-get install libopus0` and "
                "`pip install opuslib`") from err
        self._opuslib = opuslib
        self.bitrate_kbps = float(bitrate_kbps)
        self.complexity = int(complexity)
        self.delay_samples = self._new_encoder().lookahead  # 104 samples (6.5 ms) at 16 kHz

    def _new_encoder(self):
        encoder = self._opuslib.Encoder(SAMPLE_RATE, 1, self._opuslib.APPLICATION_VOIP)
        encoder.bitrate = int(round(self.bitrate_kbps * 1000))
        encoder.complexity = self.complexity
        return encoder

    def _run(self, padded):
        encoder = self._new_encoder()
        decoder = self._opuslib.Decoder(SAMPLE_RATE, 1)
        out, payload = [], 0
        for start in range(0, padded.size, FRAME_SAMPLES):
            frame = padded[start:start + FRAME_SAMPLES]
            packet = encoder.encode_float(frame.tobytes(), FRAME_SAMPLES)
            payload += len(packet)
            pcm = decoder.decode_float(packet, FRAME_SAMPLES)
            out.append(np.frombuffer(pcm, dtype=np.float32))
        return np.concatenate(out)[self.delay_samples:], payload, payload


def _load_amrwb_encoder():
    try:
        lib = ctypes.CDLL(AMRWB_LIBRARY)
    except OSError as err:
        raise BaselineUnavailableError(
            f"AMR-WB needs {AMRWB_LIBRARY} ({err}): `apt-get install libvo-amrwbenc0` "
            "(or libvo-amrwbenc-dev)") from err
    lib.E_IF_init.restype = ctypes.c_void_p
    lib.E_IF_init.argtypes = []
    lib.E_IF_encode.restype = ctypes.c_int
    lib.E_IF_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int]
    lib.E_IF_exit.restype = None
    lib.E_IF_exit.argtypes = [ctypes.c_void_p]
    return lib


class AmrWbBaseline(Baseline):
    """AMR-WB: libvo-amrwbenc (ctypes) encoder, ffmpeg decoder, DTX off."""

    name = "amrwb"
    # ffmpeg's decoded output lags the encoder input by this many samples (5.9 ms; measured by
    # cross-correlation on speech and on white noise, the same in all nine modes).
    delay_samples = 95

    def __init__(self, bitrate_kbps: float) -> None:
        super().__init__()
        matches = [m for m, rate in enumerate(AMRWB_MODES_KBPS) if abs(rate - bitrate_kbps) < 1e-6]
        if not matches:
            raise ValueError(f"AMR-WB has no {bitrate_kbps} kbps mode; modes: {AMRWB_MODES_KBPS}")
        self.mode = matches[0]
        self.bitrate_kbps = AMRWB_MODES_KBPS[self.mode]
        self._lib = _load_amrwb_encoder()
        self._ffmpeg = _require_binary("ffmpeg", "ffmpeg")

    def encode(self, padded: np.ndarray) -> bytes:
        """Whole 20 ms frames `[k * 320]` float32 -> storage-format frames (no file magic)."""
        speech = _to_int16(padded)
        state = self._lib.E_IF_init()
        if not state:
            raise RuntimeError("E_IF_init failed")
        out = (ctypes.c_ubyte * 256)()
        frames = []
        try:
            for start in range(0, speech.size, FRAME_SAMPLES):
                frame = np.ascontiguousarray(speech[start:start + FRAME_SAMPLES])
                n = self._lib.E_IF_encode(
                    state, self.mode, frame.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), out, 0)
                if n <= 0:
                    raise RuntimeError(f"E_IF_encode returned {n} in mode {self.mode}")
                frames.append(bytes(out[:n]))
        finally:
            self._lib.E_IF_exit(state)
        return b"".join(frames)

    def decode(self, frames: bytes) -> np.ndarray:
        """Storage-format frames -> float32 16 kHz samples, decoded by ffmpeg."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.awb")
            with open(path, "wb") as f:
                f.write(AMRWB_MAGIC + frames)
            pcm = subprocess.run(
                [self._ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path,
                 "-ar", str(SAMPLE_RATE), "-ac", "1", "-f", "s16le", "-"],
                check=True, capture_output=True).stdout
        return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0

    def _run(self, padded):
        frames = self.encode(padded)
        decoded = self.decode(frames)[self.delay_samples:]
        return decoded, len(frames), len(frames) + len(AMRWB_MAGIC)


def ogg_pages(data: bytes) -> list[tuple[int, int, list[int]]]:
    """Pages of a single-stream Ogg file (RFC 3533): (header flags, granule, lacing values)."""
    pages, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS" or pos + 27 > len(data):
            raise ValueError(f"not an Ogg page at byte {pos}")
        flags, granule = data[pos + 5], struct.unpack_from("<q", data, pos + 6)[0]
        nsegs = data[pos + 26]
        lacing = list(data[pos + 27:pos + 27 + nsegs])
        pages.append((flags, granule, lacing))
        pos += 27 + nsegs + sum(lacing)
    return pages


def ogg_packets(data: bytes) -> list[int]:
    """Sizes of the logical packets of a single-stream Ogg file, in order."""
    sizes, current = [], 0
    for _, _, lacing in ogg_pages(data):
        for value in lacing:
            current += value
            if value < 255:
                sizes.append(current)
                current = 0
    return sizes


class SpeexBaseline(Baseline):
    """Speex wideband (CELP, constant bitrate) through speexenc / speexdec."""

    name = "speex"
    # libspeex wideband lookahead: encoder 143 + decoder 80 samples (SPEEX_GET_LOOKAHEAD).
    delay_samples = 223

    def __init__(self, bitrate_kbps: float) -> None:
        super().__init__()
        matches = [q for q, rate in SPEEX_WB_QUALITY_KBPS.items()
                   if abs(rate - bitrate_kbps) < 1e-6]
        if not matches:
            raise ValueError(f"Speex-WB has no {bitrate_kbps} kbps quality level; rates: "
                             f"{sorted(SPEEX_WB_QUALITY_KBPS.values())}")
        self.quality = matches[0]
        self.bitrate_kbps = SPEEX_WB_QUALITY_KBPS[self.quality]
        self._speexenc = _require_binary("speexenc", "speex")
        self._speexdec = _require_binary("speexdec", "speex")

    def _run(self, padded):
        with tempfile.TemporaryDirectory() as tmp:
            src, spx, dst = (os.path.join(tmp, n) for n in ("in.wav", "x.spx", "out.wav"))
            sf.write(src, padded, SAMPLE_RATE, subtype="PCM_16")
            subprocess.run([self._speexenc, "-w", "--quality", str(self.quality), src, spx],
                           check=True, capture_output=True)
            subprocess.run([self._speexdec, spx, dst], check=True, capture_output=True)
            with open(spx, "rb") as f:
                data = f.read()
            decoded, sr = sf.read(dst, dtype="float32")
        if sr != SAMPLE_RATE or decoded.ndim != 1:
            raise RuntimeError(f"speexdec wrote {decoded.shape} at {sr} Hz, expected mono 16 kHz")
        packets = ogg_packets(data)
        header_packets = 2 + struct.unpack_from("<i", data, data.index(b"Speex   ") + 68)[0]
        # speexdec removes the lookahead only when the first audio page (granule > 0) is not
        # also the last (EOS flag 4): short low-rate files fit on one page and come out late.
        first_audio = next(p for p in ogg_pages(data) if p[1] > 0)
        if first_audio[0] & 4:
            decoded = decoded[self.delay_samples:]
        return decoded, sum(packets[header_packets:]), len(data)


_REGISTRY = {"opus": OpusBaseline, "amrwb": AmrWbBaseline, "amr-wb": AmrWbBaseline,
             "speex": SpeexBaseline, "speex-wb": SpeexBaseline}


def available_baselines() -> dict[str, object]:
    """Codec name -> its rates: a tuple of kbps, or a (min, max) range note for Opus."""
    return {"opus": "any rate in [6, 510] kbps", "amrwb": AMRWB_MODES_KBPS,
            "speex": tuple(SPEEX_WB_QUALITY_KBPS.values())}


def get_baseline(name: str, bitrate_kbps: float) -> Baseline:
    """A baseline codec by name ('opus', 'amrwb', 'speex') at a nominal bitrate in kbps."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(set(_REGISTRY))}")
    return _REGISTRY[key](float(bitrate_kbps))
