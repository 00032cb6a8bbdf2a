import numpy as np
import constants as C, cq_codec
from cq_codec.data import corpora, splits
from cq_codec.evaluation import studies
def main():
    parts = splits.split_utterances(corpora.discover("data/many", "demo"), seed=1234)
    clips = studies.load_clips(studies.select_clips(parts["val"], 12))
    codec = cq_codec.load()
    be = codec._backend
    cap = {"enc": [], "dec": []}
    enc0, dec0 = be.encode_frames, be.decode_frames
    be.encode_frames = lambda b, n: (cap["enc"].append(np.array(b)), enc0(b, n))[1]
    be.decode_frames = lambda m: (lambda r: (cap["dec"].append(np.array(r)), r)[1])(dec0(m))
    edges = np.array([0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8001])
    f = np.fft.rfftfreq(512, 1 / 16000)
    idx = np.digitize(f, edges) - 1
    def prof(frames):
        p = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
        return np.array([p[:, idx == j].sum() for j in range(len(edges) - 1)]) / len(frames)
    for k in (1, 2, 3):
        cap["enc"].clear(); cap["dec"].clear()
        for _, x in clips:
            codec.decompress(codec.compress(x, C.SAMPLE_RATE, num_modules=k))
        T, D = prof(np.concatenate(cap["enc"])), prof(np.concatenate(cap["dec"]))
        print(k, "target share %:", np.round(100 * T / T.sum(), 1).tolist())
        print(k, "decoded/target dB:", np.round(10 * np.log10(D / T), 1).tolist(), "mean sq target", float(np.mean(np.concatenate(cap['enc'])**2)))
if __name__ == "__main__":
    main()
