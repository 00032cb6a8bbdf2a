"""Ad-hoc oracle (issue 14, session 10): which band of module 3's improvement does PESQ-WB hear?
Decode v10 at 2 and 3 modules; hybrids take 0-split Hz from one and split-8 kHz from the other
(STFT masks, sample-aligned since both decodes share the codec's delay)."""
import sys, numpy as np, scipy.signal as ss
import constants as C, cq_codec
from cq_codec.data import corpora, splits
from cq_codec.evaluation import studies
from cq_codec.evaluation.metrics import score_many
def main():
    split = sys.argv[1] if len(sys.argv) > 1 else "val"
    parts = splits.split_utterances(corpora.discover("data/many", "demo"), seed=1234)
    clips = studies.load_clips(studies.select_clips(parts[split], 24))
    codec = cq_codec.load()
    def band(y, lo, hi):
        f, t, Z = ss.stft(y, 16000, nperseg=512, noverlap=384)
        Z[(f < lo) | (f >= hi)] = 0
        return ss.istft(Z, 16000, nperseg=512, noverlap=384)[1][: len(y)].astype(np.float32)
    arms = {k: [] for k in ["2 modules", "3 modules", "3 below 4k + 2 above", "2 below 4k + 3 above",
                            "3 below 2k + 2 above", "2 below 1k + 3 above"]}
    for name, x in clips:
        d = {k: codec.decompress(codec.compress(x, C.SAMPLE_RATE, num_modules=k))[0][: len(x)] for k in (2, 3)}
        d = {k: np.pad(v, (0, len(x) - len(v))) for k, v in d.items()}
        arms["2 modules"].append((x, d[2])); arms["3 modules"].append((x, d[3]))
        arms["3 below 4k + 2 above"].append((x, band(d[3], 0, 4000) + band(d[2], 4000, 9000)))
        arms["2 below 4k + 3 above"].append((x, band(d[2], 0, 4000) + band(d[3], 4000, 9000)))
        arms["3 below 2k + 2 above"].append((x, band(d[3], 0, 2000) + band(d[2], 2000, 9000)))
        arms["2 below 1k + 3 above"].append((x, band(d[2], 0, 1000) + band(d[3], 1000, 9000)))
    for k, pairs in arms.items():
        s = score_many(pairs, processes=2)
        print(f"{k:28s} PESQ-WB {np.mean([r['pesq_wb'] for r in s]):.3f}  STOI {np.mean([r['stoi'] for r in s]):.3f}", flush=True)


if __name__ == '__main__':
    main()