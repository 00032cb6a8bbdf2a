"""Collect the shipped model's codes on many-voices train / val clips (keras backend)."""
import glob, os, sys, numpy as np, soundfile as sf
import cq_codec
c = cq_codec.load("cq_codec/pretrained/default.keras", backend="keras")
rng = np.random.default_rng(0)
for split, n in (("train", 400), ("val", 120)):
    files = sorted(glob.glob(f"data/many/{split}/**/*.wav", recursive=True))
    files = [files[i] for i in rng.choice(len(files), min(n, len(files)), replace=False)]
    mods, gains, lsfs = [[], [], []], [], []
    for f in files:
        x, sr = sf.read(f, dtype="float32")
        if x.ndim > 1: x = x.mean(1)
        codes = c.encode(x, sr)
        for ch in codes.chunks(10**9):
            for i in range(3): mods[i].append(ch.modules[i][..., 0])
            gains.append(ch.gain)
    np.savez(f"results/bitrate_scaling/v14/studies/{split}.npz", **{f"m{i}_{k}": a for i in range(3) for k, a in enumerate(mods[i])},
             **{f"g_{k}": a for k, a in enumerate(gains)})
    print(split, len(files), sum(len(a) for a in mods[0]), "frames")
