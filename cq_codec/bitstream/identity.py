"""A model's identity, the 8 bytes a `.nac` header records of the model that wrote it.

From file version 4 on this is `model_id`: sha256 over a versioned description of what decoding
depends on (the code layout, the entropy tables) and every weight's shape, dtype and bytes, in
order. The model's Keras config is not part of it, so an option added to a config later (with
its default) changes no model's identity, and configs need no tricks to keep old identities.

Files of versions 1-3 carry the identity their writer computed: sha256 over the model's config
and weights (`codec_stream.model_sha256`, kept for them). `ModelIdentity.for_version` gives the
one a file of a given version must match, so every file written so far still decodes.
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

from cq_codec.bitstream.codec_stream import _json_copy, code_layout, model_sha256

__all__ = ["ID_FORMAT", "ID_VERSION", "FIRST_FILE_VERSION", "model_id", "ModelIdentity"]

ID_FORMAT = "cq_codec.model_id"
ID_VERSION = 1
FIRST_FILE_VERSION = 4       # the first .nac version whose header carries `model_id`


def _layout(model) -> dict:
    """The code streams a model's files carry: the CQ codec's LSF and module streams, or the
    waveform codec's codebooks (and its hop)."""
    if hasattr(model, "lsf_quantizer"):
        return {"codec": "cq", **code_layout(model)}
    return {"codec": "waveform", "codebook_sizes": [int(k) for k in model.codebook_sizes], "hop": int(model.hop)}


def model_id(model) -> str:
    """sha256 (hex) over {format, version, code layout, entropy tables} (JSON, sorted keys) and
    every weight's shape, dtype and bytes, in order (not the weights' paths: Keras numbers
    auto-named layers per process)."""
    desc = {"format": ID_FORMAT, "version": ID_VERSION, "layout": _layout(model),
            "entropy_tables": getattr(model, "entropy_tables", None)}
    h = hashlib.sha256(json.dumps(_json_copy(desc), sort_keys=True, separators=(",", ":")).encode())
    for w in model.weights:
        v = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{v.shape}|{v.dtype}".encode())
        h.update(v.tobytes())
    return h.hexdigest()


class ModelIdentity:
    """A loaded model's identities, each computed once when first needed: `current` (`model_id`,
    what the writer records) and `legacy` (the config hash files of versions 1-3 carry)."""

    def __init__(self, model):
        self.model = model

    @functools.cached_property
    def current(self) -> str:
        return model_id(self.model)

    @functools.cached_property
    def legacy(self) -> str:
        return model_sha256(self.model)

    def for_version(self, version: int) -> str:
        """The identity a file of `version` records of the model that wrote it."""
        return self.current if int(version) >= FIRST_FILE_VERSION else self.legacy
