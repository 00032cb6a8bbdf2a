"""The cq-codec command line: a thin layer over `cq_codec.api` (argparse, for the subcommands).

    python -m cq_codec encode IN.wav OUT.nac [--model PATH] [--bitrate KBPS] [--backend auto|keras|tflite|fast|bf16]
    python -m cq_codec decode IN.nac OUT.wav [--model PATH] [--no-postfilter] [--backend auto|keras|tflite|fast|bf16]
    python -m cq_codec info FILE.nac

`-` reads stdin / writes stdout. Outputs are written to a temporary file in the destination's
directory and renamed into place only when complete, so a failure never leaves a half-written
file. An output path that is a symbolic link is written through: the link stays and its target
(in the target's directory) is replaced, as `cp` and editors do. Errors print
`cq-codec: error: ...` on stderr and exit with status 1 (2 for bad usage); a reader that closes
the pipe early (`cq-codec info x.nac | head -1`) ends the command quietly with status 141, as
coreutils do on SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

__all__ = ["main", "run", "build_parser"]

_PROG = "cq-codec"


def _note(msg: str) -> None:
    print(f"{_PROG}: {msg}", file=sys.stderr)


def _frames_per_chunk(text: str) -> int:
    """argparse type: an int in [1, MAX_FRAMES_PER_CHUNK], checked before any work."""
    from cq_codec.bitstream.container import MAX_FRAMES_PER_CHUNK
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_FRAMES_PER_CHUNK:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..{MAX_FRAMES_PER_CHUNK} (hops of 30 ms per chunk)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description="CQ neural speech codec: .wav <-> .nac")
    sub = p.add_subparsers(dest="command", required=True)
    model_help = ("trained .keras model, CQ or waveform (default: cq_codec/pretrained/default.keras; "
                  "'waveform_rvq' names the shipped waveform codec)")
    e = sub.add_parser("encode", help="audio file -> .nac")
    e.add_argument("input", help="audio file (any rate / channel count libsndfile reads), or - for stdin")
    e.add_argument("output", help=".nac file, or - for stdout")
    e.add_argument("--model", default=None, help=model_help)
    e.add_argument("--bitrate", type=float, default=None,
                   help="target kbps: the operating point (number of modules) nearest to it is used; for a "
                        "waveform model the most codebooks whose expected rate fits it (error if none does)")
    e.add_argument("--frames-per-chunk", type=_frames_per_chunk, default=None,
                   help="hops (30 ms) per .nac chunk, 1..4096 (default 250; a waveform model needs whole "
                        "latent frames per chunk: 248 by default for hop 128)")
    e.add_argument("--backend", choices=("auto", "keras", "tflite", "fast", "bf16"), default=None,
                   help="network runtime: auto (default: tflite where it serves the model, else keras; "
                        "$CQ_CODEC_BACKEND overrides), keras (TensorFlow), tflite (LiteRT + XNNPACK), fast (keras with "
                        "the encoders' output convolutions re-laid for oneDNN; codes may differ from keras's "
                        "in rare rounding cases) or bf16 (bfloat16 on oneDNN, ~1.4x faster on CPUs with "
                        "AVX512_BF16; codes and audio differ slightly from keras's)")
    d = sub.add_parser("decode", help=".nac -> 16 kHz audio file (format from the extension, else WAV)")
    d.add_argument("input", help=".nac file, or - for stdin")
    d.add_argument("output", help="audio file, or - for stdout (WAV)")
    d.add_argument("--model", default=None, help=model_help)
    d.add_argument("--no-postfilter", dest="postfilter", action="store_false",
                   help="skip the decoder's adaptive pitch + formant postfilter (lpc/postfilter.py)")
    d.add_argument("--backend", choices=("auto", "keras", "tflite", "fast", "bf16"), default=None,
                   help="network runtime: auto (default: tflite where it serves the model, else keras; "
                        "$CQ_CODEC_BACKEND overrides), keras (TensorFlow), tflite (LiteRT + XNNPACK), fast (keras with "
                        "the encoders' output convolutions re-laid for oneDNN; codes may differ from keras's "
                        "in rare rounding cases) or bf16 (bfloat16 on oneDNN, ~1.4x faster on CPUs with "
                        "AVX512_BF16; codes and audio differ slightly from keras's)")
    i = sub.add_parser("info", help="print a .nac file's header and metadata (no model needed)")
    i.add_argument("input", help=".nac file, or - for stdin")
    return p


@contextlib.contextmanager
def _atomic_output(path: str):
    """Yields a path to write; on success moves it to `path` (or copies it to stdout for `-`)."""
    if path == "-":
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            yield out
            with open(out, "rb") as f:
                while block := f.read(1 << 20):
                    sys.stdout.buffer.write(block)
            sys.stdout.buffer.flush()
        return
    path = os.path.realpath(path)       # through symbolic links: replace the target, keep the link
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path!r} is a directory")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".part")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open_input(path: str):
    if path == "-":
        return io.BytesIO(sys.stdin.buffer.read())
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} not found")
    return open(path, "rb")


def _encode(args) -> None:
    from cq_codec import api
    from cq_codec.inference import DEFAULT_FRAMES_PER_CHUNK
    codec = api.load(args.model, args.frames_per_chunk if args.frames_per_chunk is not None else DEFAULT_FRAMES_PER_CHUNK,
                     backend=args.backend or api.DEFAULT_BACKEND)
    audio = api.read_audio_blocks(args.input)
    if audio.converted:
        _note(f"note: input is {audio.sample_rate} Hz, {audio.channels} channel(s); "
              f"{'downmixed to mono and ' if audio.channels != 1 else ''}resampled to 16000 Hz"
              if audio.sample_rate != 16000 else
              f"note: input has {audio.channels} channels; downmixed to mono")
    if getattr(codec, "kind", "cq") == "waveform" or codec.has_rvq:
        # Operating points = codebook counts (and modules): the most expensive one that fits.
        p = codec.point_for_bitrate(args.bitrate)     # BitrateError (a ValueError) when none fits
        if args.bitrate is not None:
            what = ("codebook(s) of the waveform codec" if getattr(codec, "kind", "cq") == "waveform"
                    else f"module(s) {p.modules} with codebooks per module")
            _note(f"--bitrate {args.bitrate:g} kbps -> {list(p.codebooks)} {what}, about {p.kbps:.2f} kbps "
                  f"({len(codec.operating_points)} operating points from {codec.operating_points[0].kbps:.2f} "
                  f"to {max(q.kbps for q in codec.operating_points):.2f} kbps)")
        data = codec.compress_blocks(audio.blocks, codebooks=p.codebooks)
        with _atomic_output(args.output) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
        return
    n = codec.modules_for_bitrate(args.bitrate)
    points = {p.modules: p.kbps for p in codec.operating_points}
    if args.bitrate is not None:
        _note(f"--bitrate {args.bitrate:g} kbps -> operating point {n} module(s), about {points[n]:.2f} kbps "
              f"(available: {', '.join(f'{k}: {v:.2f}' for k, v in points.items())})")
    data = codec.compress_blocks(audio.blocks, num_modules=n)
    with _atomic_output(args.output) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _decode(args) -> None:
    import numpy as np
    import soundfile as sf
    from cq_codec.bitstream.container import NacReader
    with _open_input(args.input) as src:
        reader = NacReader(src)         # the container's checks and limits first, before loading anything
        from cq_codec import api
        codec = api.load(args.model, postfilter=args.postfilter, backend=args.backend or api.DEFAULT_BACKEND)
        _, blocks = codec.decompress_blocks(reader)
        ext = os.path.splitext(args.output)[1].lstrip(".").upper()
        fmt = ext if args.output != "-" and ext in sf.available_formats() else "WAV"
        with _atomic_output(args.output) as tmp:
            with sf.SoundFile(tmp, "w", samplerate=16000, channels=1, format=fmt,
                              subtype="PCM_16") as out:
                for block in blocks:
                    out.write(np.clip(block, -1.0, 1.0))


def _info(args) -> None:
    from cq_codec.bitstream.container import NacReader
    with _open_input(args.input) as src:
        reader = NacReader(src)
        sizes = [len(c) for c in reader]         # checks every chunk's CRC and the file's end
    meta = dict(reader.metadata)
    seconds = meta.get("num_samples", 0) / max(1, meta.get("sample_rate", 16000))
    lines = {"version": reader.header.version, "nominal_kbps (header)": reader.header.bitrate_kbps,
             "duration_s": round(seconds, 3), "payload_bytes": sum(sizes)}
    for k, v in lines.items():
        print(f"{k}: {v}")
    print(json.dumps(meta, indent=2, sort_keys=True))


def main(argv=None) -> int:
    """Runs the CLI; returns the exit status (0 ok, 1 error). Usage errors exit with 2."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        {"encode": _encode, "decode": _decode, "info": _info}[args.command](args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): nothing to say. Point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as e:
        # ValueError covers NacError (damaged/truncated file, unknown version, model mismatch).
        msg = str(e) if not isinstance(e, FileNotFoundError) or str(e) else f"file not found: {e.filename}"
        _note(f"error: {msg}")
        return 1
    except Exception as e:  # noqa: BLE001  (last resort: one line, never a traceback)
        _note(f"error: internal error ({type(e).__name__}: {e}); please report it with the input")
        return 1
    return 0


def run() -> None:
    """Console-script entry point (`cq-codec`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
