import numpy as np
A = 32
def load(split):
    z = np.load(f"results/bitrate_scaling/v14/studies/{split}.npz")
    n = len([k for k in z if k.startswith("m0_")])
    return [[z[f"m{i}_{k}"] for k in range(n)] for i in range(3)], [z[f"g_{k}"] for k in range(n)]
def feats(mods, gains, i):
    """per symbol: x, prev1, prev2, up (module i-1 same position), gain code, position"""
    out = {k: [] for k in ("x", "p1", "p2", "up", "g", "pos", "upn")}
    for k in range(len(mods[i])):
        m = mods[i][k]                     # [frames, 128]
        x = m.reshape(-1)
        p1 = np.concatenate([[A], x[:-1]])  # A = "no previous" (context 0 in the codec)
        p2 = np.concatenate([[A, A], x[:-2]])[:len(x)]
        up = mods[i - 1][k].reshape(-1) if i > 0 else np.zeros_like(x)
        upn = np.concatenate([up[1:], [up[-1]]])  # module i-1's next position (decoded already)
        g = np.repeat(gains[k], 32, axis=1).reshape(-1)
        pos = np.tile(np.arange(128), m.shape[0])
        for key, v in zip(out, (x, p1, p2, up, g, pos, upn)):
            out[key].append(v)
    return {k: np.concatenate(v).astype(np.int64) for k, v in out.items()}
def model(ctx_fn, alpha, base=None):
    """(data, train) -> p(x | ctx) of each of data's symbols: counts fitted on train, smoothed with
    weight alpha toward `base` (another such model; None: train's order-0 frequencies)"""
    def p(d, tr):
        ct, cd = ctx_fn(tr), ctx_fn(d)
        counts = np.zeros((int(max(ct.max(), cd.max())) + 1, A)); np.add.at(counts, (ct, tr["x"]), 1)
        pb = base(d, tr) if base else ((np.bincount(tr["x"], minlength=A) + 0.5) / (len(tr["x"]) + 16))[d["x"]]
        return (counts[cd, d["x"]] + alpha * pb) / (counts.sum(1)[cd] + alpha)
    return p
def xent(tr, va, ctx_fn, alpha, base=None):
    """bits/symbol of va's codes under the model fitted on tr"""
    return -np.mean(np.log2(model(ctx_fn, alpha, base)(va, tr)))
trm, trg = load("train"); vam, vag = load("val")
for i in range(3):
    tr, va = feats(trm, trg, i), feats(vam, vag, i)
    o1 = model(lambda d: d["p1"], 1.0)
    res = {"order0": xent(tr, va, lambda d: np.zeros_like(d["x"]), 1.0),
           "order1 (now)": xent(tr, va, lambda d: d["p1"], 1.0)}
    for a in (4.0, 16.0, 64.0):
        res[f"order2 a={a:g}"] = xent(tr, va, lambda d: d["p1"] * (A + 1) + d["p2"], a, o1)
        if i > 0:
            res[f"p1+up a={a:g}"] = xent(tr, va, lambda d: d["p1"] * (A + 1) + d["up"], a, o1)
            res[f"p1+up+upn a={a:g}"] = xent(tr, va, lambda d: (d["p1"] * (A + 1) + d["up"]) * A + d["upn"], a, o1)
        res[f"p1+gain a={a:g}"] = xent(tr, va, lambda d: d["p1"] * 32 + d["g"], a, o1)
        res[f"p1+pos a={a:g}"] = xent(tr, va, lambda d: d["p1"] * 128 + d["pos"], a, o1)
    print(f"module {i + 1}: {len(va['x'])} val symbols ({len(tr['x'])} train)")
    for k, v in res.items():
        print(f"  {k:22s} {v:.4f} bits/symbol  ({100 * (v / res['order1 (now)'] - 1):+.1f} %)")
