"""Structure-aware fuzzer of the `.nac` decoder: hostile files must give `NacError`, fast.

    .venv/bin/python scripts/fuzz_nac.py --inputs 100000 [--seconds S] [--seed 0] [--out DIR]

It builds a tiny seeded CQ model (two modules; one copy with plain, one with context entropy
tables) or loads `--model PATH`, encodes a few signals into valid files of every version (1, 2,
3, 4; one to many chunks; 1 or all modules), then feeds `Codec.decompress` (and, every few inputs,
`decompress_blocks` on an unseekable stream, and the CLI's `info`) with mutations of them:

- bytes: flips, random overwrites, truncation, extension, random files, empty files;
- header fields (per version: metadata length, sample count, modules, codebooks, hops per chunk,
  stream format, name length, model id) set to extremes, with the header CRC recomputed;
- chunks: lengths, payload flips, cuts, extensions, drops, duplicates, swaps, empty or
  random payloads, with chunk CRCs recomputed where the mutation asks (`--fix-crc`);
- version-1 JSON: fields deleted or given wrong types, huge or negative numbers, deep nesting,
  5,000-digit integers, NaN;
- splices of one file's header with another's chunks, and another model's id.

Outcomes: `nac_error` (refused, as it should be), `decoded` (a harmless mutation behind a
recomputed CRC), and failures that stop the run: `unexpected` (any other exception), `hang`
(over `--time-limit` seconds for one input) and `memory` (peak RSS over `--memory-limit-mb`
during one input, or a MemoryError; the process also runs under RLIMIT_DATA so a bomb cannot
take the machine). Every failing input is kept in `--out` with its traceback as a reproducer.
Prints (and with `--json`, writes) the counts by outcome and by mutation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cq_codec.bitstream import container as nac  # noqa: E402

FAILURES = ("unexpected", "hang", "memory")


# ---------------------------------------------------------------- the codecs and valid files

def tiny_codecs(seed: int = 0, frames_per_chunk: int = 8) -> list:
    """Two tiny 2-module codecs from one seeded network: plain and context entropy tables."""
    import keras
    from scipy.signal import lfilter

    import lpc
    from cq_codec import api, inference
    from cq_codec.config import Config
    from cq_codec.training.trainer import build_model

    def signal_(seconds, s, scale=0.1):
        rng = np.random.default_rng(s)
        x = lfilter([1.0], [1.0, -1.6, 0.8], rng.standard_normal(int(16000 * seconds)))
        return (scale * x / x.std()).astype(np.float32)

    codecs = []
    for kind in ("categorical", "context"):
        keras.utils.set_random_seed(seed)
        sig = signal_(1.0, seed, 1.0).astype(np.float64)
        lsf = lpc.analyze(sig)
        ts = range(1, len(lsf) - 2)
        sample = {"x": np.array([sig[t * 480 - 16: t * 480 + 512] for t in ts], np.float32),
                  "lsf": np.array([lsf[t - 1: t + 2] for t in ts], np.float32)}
        cfg = Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1).validate()
        model = build_model(cfg, 1.0, sample)
        inference.fit_entropy_tables(model, [signal_(0.5, seed + k) for k in range(4)], kinds=(kind,))
        codecs.append(api.Codec(model, name=f"tiny_{kind}", frames_per_chunk=frames_per_chunk))
    return codecs


def _v1_from(data: bytes, codec) -> bytes:
    """The version-1 file (JSON metadata, as the first writer made it) with the same chunks."""
    from cq_codec.bitstream import codec_stream as cs
    header, meta, chunks = nac.read_nac(data)
    layout, n = cs.code_layout(codec.model), len(meta["stages"])
    v1 = {"model": {"name": meta["model"]["name"], "sha256": codec.identity.legacy}, "sample_rate": 16000,
          "num_samples": meta["num_samples"], "stages": meta["stages"],
          "alphabet_sizes": layout["lsf"] + [a for m in layout["modules"][:n] for a in m["alphabet_sizes"]],
          "frames_per_chunk": meta["frames_per_chunk"], "num_frames": meta["num_frames"],
          "bitrate_kbps": header.bitrate_kbps, "stream_format": 1,
          "layout": {"lsf": layout["lsf"], "modules": layout["modules"][:n]},
          "input_sample_rate": 16000, "input_channels": 1}
    return nac.write_nac_v1(v1, chunks, header.bitrate_kbps)


def seed_files(codec) -> list[bytes]:
    """Valid files of every version: short and long (several chunks), 1 and all modules."""
    rng = np.random.default_rng(7)
    files = []
    for seconds, modules in ((0.05, 1), (0.3, 2), (0.6, 1), (0.6, 2)):    # 1 to 3 chunks of 8 hops
        wav = (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
        v4 = codec.compress(wav, 16000, num_modules=modules)
        header, meta, chunks = nac.read_nac(v4)
        legacy = {**meta, "model": {**meta["model"], "sha256": codec.identity.legacy}}   # versions 1-3's model id
        files += [v4, nac.write_nac_v3(legacy, chunks, header.bitrate_kbps),
                  nac.write_nac_v2(legacy, chunks, header.bitrate_kbps), _v1_from(v4, codec)]
    return files


# ---------------------------------------------------------------- structure

class Parsed:
    """A valid file split into its header (without CRC) and chunk payloads."""

    def __init__(self, data: bytes):
        header, self.meta, self.chunks = nac.read_nac(data)
        self.version = header.version
        self.head = data[: header.size - 4]


def build(head: bytes, chunks, fix_crc: bool = True, chunk_crcs=None) -> bytes:
    """Header + CRC (recomputed, or a stale one) + chunks with lengths and CRCs."""
    crc = zlib.crc32(head) if fix_crc else random.getrandbits(32)
    parts = [head, struct.pack(">I", crc)]
    for i, c in enumerate(chunks):
        ccrc = zlib.crc32(c) if chunk_crcs is None or chunk_crcs[i] is None else chunk_crcs[i]
        parts += [struct.pack(">II", len(c), ccrc), c]
    return b"".join(parts)


def _set_meta_len(head: bytearray, version: int) -> None:
    if version in (3, 4):
        head[4:8] = struct.pack(">I", len(head) - 9 + 4)
    elif version == 1:
        head[4:8] = struct.pack(">I", len(head) - 9)


# Header fields per version: (offset, size); the extremes each is set to.
FIELDS = {
    3: [(4, 4), (8, 1), (9, 8), (17, 5), (22, 1), (23, 2), (25, 1), (26, 1), (27, 1)],
    4: [(4, 4), (8, 1), (9, 8), (17, 5), (22, 1), (23, 2), (25, 1), (26, 1), (27, 1)],   # version 3's layout
    2: [(4, 8), (12, 5), (17, 1), (18, 2), (20, 1), (21, 1), (22, 1)],
    1: [(4, 4), (8, 1)],
}


def _extreme(rng: random.Random, size: int) -> int:
    top = (1 << (8 * size)) - 1
    return rng.choice([0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, 4096, 4097, 65535,
                       rng.randrange(top + 1), rng.randrange(min(top, 300) + 1)]) & top


V1_BAD_VALUES = [None, True, -1, 0, 1, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64 + 1, 1.5, float("1e308"), "9",
                 "", [], {}, [1, 2, 3], {"a": 1}, [-1], [0], [2 ** 70], ["lsf"], list(range(300))]


def _v1_json_text(rng: random.Random, meta: dict) -> bytes:
    m = json.loads(json.dumps(meta))
    choice = rng.randrange(7)
    if choice == 0 and m:                                    # delete a field
        m.pop(rng.choice(sorted(m)))
    elif choice == 1:                                        # a field of the wrong type / range
        m[rng.choice(sorted(m) + ["layout", "codebooks"])] = rng.choice(V1_BAD_VALUES)
    elif choice == 2 and isinstance(m.get("layout"), dict):  # a nested field
        mods = m["layout"].get("modules") or [{}]
        target = rng.choice([m["layout"], mods[0] if isinstance(mods[0], dict) else {}])
        if target:
            target[rng.choice(sorted(target))] = rng.choice(V1_BAD_VALUES)
    elif choice == 3:                                        # deep nesting
        depth = rng.choice([15, 16, 17, 100, 5000, 100000])
        return (b'{"num_chunks":' + str(m.get("num_chunks", 1)).encode() + b',"x":'
                + b"[" * depth + b"]" * depth + b"}")
    elif choice == 4:                                        # huge integers
        key = rng.choice(["num_samples", "num_frames", "frames_per_chunk", "num_chunks", "sample_rate"])
        text = json.dumps(m, sort_keys=True)
        return text.replace("}", f',"{key}":1{"0" * rng.choice([20, 31, 5000])}}}', 1).encode() \
            if key not in m else json.dumps({**m, key: 0}).replace(
                f'"{key}": 0', f'"{key}": 1{"0" * rng.choice([18, 31, 5000])}').encode()
    elif choice == 5:                                        # NaN / Infinity / garbage
        return json.dumps(m).replace("16000", rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "16000.0"]), 1).encode()
    else:                                                    # consistent but huge counts
        m.update(num_samples=rng.choice([2 ** 40 - 1, 2 ** 62, 10 ** 8]),
                 num_frames=rng.choice([2 ** 35, 10 ** 6, 8_900_000]),
                 frames_per_chunk=rng.choice([1, 4096, 2 ** 63, 65535]))
    return json.dumps(m, sort_keys=True).encode()


def mutate(rng: random.Random, files: list[bytes], parsed: list[Parsed]) -> tuple[str, bytes]:
    """One hostile input -> (mutation name, bytes)."""
    i = rng.randrange(len(files))
    data, p = files[i], parsed[i]
    kind = rng.choice(["flip", "overwrite", "truncate", "extend", "random", "field", "field", "field",
                       "chunk", "chunk", "chunk", "payload", "payload", "v1json", "splice", "model_id"])
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "overwrite":
        b = bytearray(data)
        for _ in range(rng.choice([1, 3, 16])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return kind, bytes(b)
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "extend":
        return kind, data + bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 100])))
    if kind == "random":
        n = rng.choice([0, 3, 9, 40, 500])
        prefix = rng.choice([b"", b"NAC", b"NAC\x01", b"NAC\x02", b"NAC\x03"])
        return kind, prefix + bytes(rng.randrange(256) for _ in range(n))
    if kind == "field" or (kind == "v1json" and p.version != 1):
        kind = "field"
        head = bytearray(p.head)
        off, size = rng.choice(FIELDS[p.version])
        if off + size <= len(head):
            head[off:off + size] = _extreme(rng, size).to_bytes(size, "big")
        if rng.random() < 0.3:                      # also a name / metadata of another length
            head += bytes(rng.randrange(256) for _ in range(rng.choice([1, 5])))
            if rng.random() < 0.5:
                _set_meta_len(head, p.version)
        chunks = list(p.chunks)
        if rng.random() < 0.3:
            chunks = rng.choice([[], [b""], [b""] * rng.choice([2, 40]), chunks[:1]])
        return kind, build(bytes(head), chunks, fix_crc=rng.random() < 0.9)
    if kind == "v1json":
        raw = _v1_json_text(rng, p.meta)
        head = bytearray(p.head[:9]) + raw
        _set_meta_len(head, 1)
        return kind, build(bytes(head), p.chunks, fix_crc=rng.random() < 0.95)
    if kind == "chunk":
        chunks, crcs = list(p.chunks), None
        op = rng.randrange(7)
        if op == 0 and chunks:
            chunks.pop(rng.randrange(len(chunks)))
        elif op == 1 and chunks:
            chunks.insert(rng.randrange(len(chunks) + 1), rng.choice(chunks))
        elif op == 2 and len(chunks) > 1:
            a, b = rng.sample(range(len(chunks)), 2)
            chunks[a], chunks[b] = chunks[b], chunks[a]
        elif op == 3 and chunks:
            j = rng.randrange(len(chunks))
            chunks[j] = chunks[j][: rng.randrange(len(chunks[j]) + 1)]
        elif op == 4 and chunks:
            chunks[rng.randrange(len(chunks))] = b""
        elif op == 5:                              # a raw length field set to an extreme value
            out = bytearray(build(p.head, chunks))
            pos = len(p.head) + 4
            for _ in range(rng.randrange(len(chunks) or 1)):
                if pos + 8 <= len(out):
                    pos += 8 + struct.unpack(">I", out[pos:pos + 4])[0]
            if pos + 4 <= len(out):
                out[pos:pos + 4] = _extreme(rng, 4).to_bytes(4, "big")
            return kind, bytes(out)
        else:
            j = rng.randrange(len(chunks)) if chunks else 0
            if chunks:
                chunks[j] = chunks[j] + bytes(rng.randrange(256) for _ in range(rng.choice([4, 64, 4000])))
        if rng.random() < 0.1:
            crcs = [rng.getrandbits(32) if rng.random() < 0.5 else None for _ in chunks]
        return kind, build(p.head, chunks, chunk_crcs=crcs)
    if kind == "payload":                          # damage behind a recomputed CRC: reaches the range decoder
        chunks = list(p.chunks)
        j = rng.randrange(len(chunks))
        c = bytearray(chunks[j])
        op = rng.randrange(4)
        if op == 0 and c:
            for _ in range(rng.choice([1, 2, 8])):
                c[rng.randrange(len(c))] ^= 1 << rng.randrange(8)
        elif op == 1:
            c = bytearray(rng.randrange(256) for _ in range(len(c)))
        elif op == 2:
            c = bytearray(rng.randrange(256) for _ in range(4 * rng.choice([0, 1, 2, 50, 500])))
        else:
            c = bytearray(rng.choice([b"\x00", b"\xff"]) * len(c))
        chunks[j] = bytes(c)
        return kind, build(p.head, chunks)
    if kind == "splice":
        q = parsed[rng.randrange(len(parsed))]
        return kind, build(p.head, q.chunks)
    # model_id: another model's file (the id field rewritten, CRC recomputed)
    head = bytearray(p.head)
    if p.version in (3, 4):
        head[9:17] = bytes(rng.randrange(256) for _ in range(8))
    elif p.version == 2:
        head[4:12] = bytes(rng.randrange(256) for _ in range(8))
    else:
        m = dict(p.meta, model={"name": "other", "sha256": "%064x" % rng.getrandbits(256)})
        head = bytearray(p.head[:9]) + json.dumps(m, sort_keys=True).encode()
        _set_meta_len(head, 1)
    return kind, build(bytes(head), p.chunks)


# ---------------------------------------------------------------- running one input

class _Timeout(BaseException):
    """Raised by SIGALRM inside a decode that runs over the per-input limit (not an Exception,
    so no `except Exception` on the way can swallow it)."""


def _alarm(signum, frame):
    raise _Timeout()


def peak_rss_mb() -> float:
    """Peak resident set size since the last `reset_peak_rss` (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Resets VmHWM (Linux: write 5 to /proc/self/clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Unseekable(io.RawIOBase):
    """A pipe-like stream: no size known up front (the per-chunk checks must hold alone)."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._f.readinto(b)


def _decode(codec, data: bytes, how: str) -> None:
    if how == "decompress":
        codec.decompress(data)
    elif how == "stream":
        _, blocks = codec.decompress_blocks(io.BufferedReader(Unseekable(data)))
        for _ in blocks:
            pass
    else:                                          # the CLI's info (needs no model)
        from cq_codec import __main__ as cli
        path = os.path.join(_scratch(), "in.nac")
        with open(path, "wb") as f:
            f.write(data)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = cli.main(["info", path])
        if code not in (0, 1) or (code == 1 and "cq-codec: error:" not in err.getvalue()):
            raise AssertionError(f"info exited {code}: {err.getvalue()!r}")
        if code == 1:
            raise nac.NacError(err.getvalue().strip())


_SCRATCH = []


def _scratch() -> str:
    if not _SCRATCH:
        import tempfile
        _SCRATCH.append(tempfile.mkdtemp(prefix="fuzz_nac_"))
    return _SCRATCH[0]


def run_one(codec, data: bytes, how: str, time_limit: float, memory_limit_mb: float) -> tuple[str, str, float]:
    """Decode one input -> (outcome, detail, seconds)."""
    reset_peak_rss()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    t0 = time.perf_counter()
    try:
        _decode(codec, data, how)
        outcome, detail = "decoded", ""
    except _Timeout:
        outcome, detail = "hang", f"over {time_limit} s"
    except nac.NacError as e:
        outcome, detail = "nac_error", str(e)
    except MemoryError:
        outcome, detail = "memory", traceback.format_exc()
    except Exception:  # noqa: BLE001  (the point: any other type is a finding)
        outcome, detail = "unexpected", traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    if outcome not in FAILURES and seconds > time_limit:
        outcome, detail = "hang", f"took {seconds:.1f} s (limit {time_limit} s)"
    peak = peak_rss_mb()
    if outcome not in FAILURES and peak > memory_limit_mb:
        outcome, detail = "memory", f"peak RSS {peak:.0f} MB (limit {memory_limit_mb:.0f} MB)"
    return outcome, detail, seconds


# ---------------------------------------------------------------- the run

def fuzz(codecs: list, *, inputs: int | None = None, seconds: float | None = None, seed: int = 0,
         time_limit: float = 10.0, memory_limit_mb: float = 2048, out_dir: str | None = None,
         stop_on_failure: bool = True, stream_every: int = 10, info_every: int = 10,
         log=None) -> dict:
    """Fuzz until `inputs` inputs or `seconds` seconds (or the first failure). Returns a report:
    inputs, seconds, counts by outcome, counts by mutation and outcome, slowest input, peak RSS,
    failures [{outcome, mutation, path, detail}]."""
    if inputs is None and seconds is None:
        raise ValueError("give inputs and/or seconds")
    rng = random.Random(seed)
    random.seed(seed)                               # build() draws stale CRCs from it
    pools = []
    for codec in codecs:
        files = seed_files(codec)
        pools.append((codec, files, [Parsed(f) for f in files]))
    counts = {k: 0 for k in ("nac_error", "decoded", *FAILURES)}
    by_kind: dict = {}
    failures, slowest, peak = [], (0.0, ""), 0.0
    start = time.perf_counter()
    n = 0
    while (inputs is None or n < inputs) and (seconds is None or time.perf_counter() - start < seconds):
        codec, files, parsed = pools[n % len(pools)]
        kind, data = mutate(rng, files, parsed)
        how = ("stream" if stream_every and n % stream_every == 1 else
               "info" if info_every and n % info_every == 2 else "decompress")
        outcome, detail, took = run_one(codec, data, how, time_limit, memory_limit_mb)
        n += 1
        counts[outcome] += 1
        by_kind.setdefault(kind, {}).setdefault(outcome, 0)
        by_kind[kind][outcome] += 1
        if took > slowest[0]:
            slowest = (took, f"{kind}/{how}/{outcome}")
        peak = max(peak, peak_rss_mb())
        if outcome in FAILURES:
            path = None
            if out_dir:
                os.makedirs(out_dir, exist_ok=True)
                path = os.path.join(out_dir, f"{outcome}_{seed}_{n}.nac")
                with open(path, "wb") as f:
                    f.write(data)
                with open(path + ".txt", "w") as f:
                    f.write(f"mutation {kind}, via {how}, codec {codec.name}\n{detail}\n")
            failures.append({"outcome": outcome, "mutation": kind, "how": how, "path": path, "detail": detail})
            if log:
                log(f"FAILURE {outcome} ({kind}/{how}) kept as {path}:\n{detail}")
            if stop_on_failure:
                break
        if log and n % 5000 == 0:
            log(f"{n} inputs, {time.perf_counter() - start:.0f} s: {counts}")
    return {"inputs": n, "seconds": round(time.perf_counter() - start, 1), "seed": seed, "counts": counts,
            "by_mutation": by_kind, "slowest_s": round(slowest[0], 3), "slowest": slowest[1],
            "peak_rss_mb": round(peak), "failures": failures}


def limit_memory(mb: float) -> None:
    """RLIMIT_DATA: an allocation past it raises MemoryError instead of swapping the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    want = int(mb * 2 ** 20)
    resource.setrlimit(resource.RLIMIT_DATA, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", type=int, default=None, help="stop after this many inputs")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="a trained .keras model (default: two tiny seeded models)")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per input before it counts as a hang")
    p.add_argument("--memory-limit-mb", type=float, default=2048, help="peak RSS per input before it counts as a failure")
    p.add_argument("--rlimit-data-mb", type=float, default=4096, help="hard cap on the process's data (0: none)")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "_work", "fuzz_nac"), help="reproducers go here")
    p.add_argument("--keep-going", action="store_true", help="count failures instead of stopping at the first")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.inputs is None and args.seconds is None:
        p.error("give --inputs and/or --seconds")
    if args.rlimit_data_mb:
        limit_memory(args.rlimit_data_mb)
    if args.model:
        from cq_codec import api
        codecs = [api.load(args.model, frames_per_chunk=8)]
    else:
        codecs = tiny_codecs(args.seed)
    report = fuzz(codecs, inputs=args.inputs, seconds=args.seconds, seed=args.seed, time_limit=args.time_limit,
                  memory_limit_mb=args.memory_limit_mb, out_dir=args.out, stop_on_failure=not args.keep_going,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
