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
def xent(tr, va, ctx_fn, alpha, base=None):
    """bits/symbol on va of p(x|ctx) = (n(ctx,x) + alpha * pbase(x)) / (n(ctx) + alpha)"""
    ct, cv = ctx_fn(tr), ctx_fn(va)
    K = int(max(ct.max(), cv.max())) + 1
    counts = np.zeros((K, A)); np.add.at(counts, (ct, tr["x"]), 1)
    pb_tr = base(tr, tr) if base else np.tile(np.bincount(tr["x"], minlength=A) / len(tr["x"]), (len(tr["x"]), 1))
    pb_va = base(va, tr) if base else np.tile((np.bincount(tr["x"], minlength=A) + 0.5) / (len(tr["x"]) + 16), (len(va["x"]), 1))
    tot = counts.sum(1)
    p = (counts[cv, va["x"]] + alpha * pb_va[np.arange(len(va["x"])), va["x"]]) / (tot[cv] + alpha)
    return -np.mean(np.log2(p))
def cond_probs(ctx_fn, alpha, base=None):
    """function (data, train) -> [N, A] probabilities under the model fitted on train"""
    def f(d, tr):
        ct, cd = ctx_fn(tr), ctx_fn(d)
        K = int(max(ct.max(), cd.max())) + 1
        counts = np.zeros((K, A)); np.add.at(counts, (ct, tr["x"]), 1)
        pb = base(d, tr) if base else np.tile((np.bincount(tr["x"], minlength=A) + 0.5) / (len(tr["x"]) + 16), (len(d["x"]), 1))
        return (counts[cd] + alpha * pb) / (counts[cd].sum(1, keepdims=True) + alpha)
    return f
trm, trg = load("train"); vam, vag = load("val")
for i in range(3):
    tr, va = feats(trm, trg, i), feats(vam, vag, i)
    o1 = cond_probs(lambda d: d["p1"], 1.0)
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
