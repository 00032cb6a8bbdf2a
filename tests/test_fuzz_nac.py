"""scripts/fuzz_nac.py: a short seeded fuzz run of the decoder (0 unexpected exceptions, hangs or
memory blow-ups), and the harness itself catches and keeps each kind of failure."""

import importlib.util
import os
import random
import time

import numpy as np
import pytest

from cq_codec.bitstream import container as nac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("fuzz_nac", os.path.join(ROOT, "scripts", "fuzz_nac.py"))
fuzz_nac = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_nac)


@pytest.fixture(scope="module")
def codecs():
    return fuzz_nac.tiny_codecs(0)


def test_seed_files_are_valid_and_cover_every_version(codecs):
    files = fuzz_nac.seed_files(codecs[0])
    versions = [nac.read_nac(f)[0].version for f in files]
    assert sorted(set(versions)) == [1, 2, 3, 4]
    assert max(len(nac.read_nac(f)[2]) for f in files) >= 3          # multi-chunk files
    for f in files:
        y, sr = codecs[0].decompress(f)
        assert sr == 16000 and y.size and np.all(np.isfinite(y))


def test_mutations_are_deterministic(codecs):
    files = fuzz_nac.seed_files(codecs[0])
    parsed = [fuzz_nac.Parsed(f) for f in files]

    def draw():
        rng = random.Random(3)
        random.seed(3)
        return [fuzz_nac.mutate(rng, files, parsed) for _ in range(200)]
    first = draw()
    assert first == draw()
    assert {k for k, _ in first} == {"flip", "overwrite", "truncate", "extend", "random", "field", "chunk",
                                     "payload", "v1json", "splice", "model_id"}


def test_short_seeded_fuzz_run(codecs, tmp_path):
    """2,000 hostile inputs: every one refused with NacError or decoded; none raised anything else,
    ran over the per-input limit or grew memory past the limit."""
    report = fuzz_nac.fuzz(codecs, inputs=2000, seed=0, time_limit=60, memory_limit_mb=4096,
                           out_dir=str(tmp_path))
    counts = report["counts"]
    assert report["inputs"] == 2000 and report["failures"] == [], report["failures"]
    assert counts["unexpected"] == counts["hang"] == counts["memory"] == 0
    assert counts["nac_error"] > 1000 and counts["decoded"] > 0             # both outcomes reached
    assert counts["nac_error"] + counts["decoded"] == 2000
    assert not os.listdir(tmp_path)                                          # no reproducers


class Broken:
    """A codec that misbehaves in `how` (delegating everything else to a real one)."""

    def __init__(self, codec, how):
        self._codec, self._how = codec, how

    def __getattr__(self, name):
        return getattr(self._codec, name)

    def decompress(self, data):
        if self._how == "raise":
            raise TypeError("a bug")
        if self._how == "hang":
            while True:
                time.sleep(0.01)
        if self._how == "memory":
            block = np.ones(400 << 20, np.uint8)          # 400 MB, touched
            return block[:1], 16000
        return self._codec.decompress(data)

    def decompress_blocks(self, fileobj):
        return self.decompress(fileobj.read())


@pytest.mark.parametrize("how, outcome", [("raise", "unexpected"), ("hang", "hang"), ("memory", "memory")])
def test_harness_stops_on_failure_and_keeps_the_reproducer(codecs, tmp_path, how, outcome):
    if how == "memory" and not fuzz_nac.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here: the peak RSS cannot be reset")
    limit_mb = fuzz_nac.peak_rss_mb() + 200 if how == "memory" else 1 << 20     # now + 200 MB
    report = fuzz_nac.fuzz([Broken(codecs[0], how)], inputs=50, seed=1, time_limit=0.5 if how == "hang" else 60,
                           memory_limit_mb=limit_mb, out_dir=str(tmp_path), stream_every=0, info_every=0)
    assert report["inputs"] == 1 and report["counts"][outcome] == 1      # stopped at the first
    (failure,) = report["failures"]
    assert failure["outcome"] == outcome
    with open(failure["path"], "rb") as f:
        kept = f.read()
    with open(failure["path"] + ".txt") as f:
        assert failure["mutation"] in f.read()
    rng = random.Random(1)
    random.seed(1)
    files = fuzz_nac.seed_files(codecs[0])
    assert kept == fuzz_nac.mutate(rng, files, [fuzz_nac.Parsed(f) for f in files])[1]   # the same input again
