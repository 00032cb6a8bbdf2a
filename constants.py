"""Signal-path constants shared by every part of cq-codec (see docs/DESIGN.md).

One place for the numbers of the original CQ design (Zhen et al., ICASSP 2020) and the
choices this project makes where the original is inconsistent.
"""

SAMPLE_RATE = 16000

# Codec framing: 512-sample frames, hop 480, a 32-sample overlap with half-Hann edges.
FRAME_SIZE = 512
HOP_SIZE = 480
OVERLAP = FRAME_SIZE - HOP_SIZE  # 32
FRAMES_PER_SECOND = SAMPLE_RATE / HOP_SIZE  # 33.33...

# Pre-processing.
PREEMPHASIS = 0.68          # 1 - 0.68 z^-1
HIGHPASS_CUTOFF_HZ = 50.0   # 2nd-order Butterworth high-pass

# LPC front end.
LPC_ORDER = 16
LPC_WINDOW = 1024           # analysis window spanning two frames (rise 256, flat 512, fall 256)
LPC_WINDOW_RISE = 256
NUM_SUBFRAMES = 4           # LSFs interpolated over 4 sub-frames of 120 samples per hop
SUBFRAME_SIZE = HOP_SIZE // NUM_SUBFRAMES
LAG_WINDOW_BANDWIDTH_HZ = 60.0
WHITE_NOISE_CORRECTION = 1.0001  # r[0] *= this
LSF_MIN_GAP = 0.005         # rad, minimum distance between adjacent LSFs (and to 0 / pi)

# One residual module (the reference "gln" architecture).
CODES_PER_FRAME = 256       # with stride 2

# Bitrate arithmetic: 1 kbps = 1000 bit/s.
BITS_PER_KBIT = 1000.0
