"""Bitstream: entropy coding of quantizer codes and the `.nac` container (see docs/DESIGN.md)."""

from cq_codec.bitstream.container import (
    NacChecksumError, NacError, NacFormatError, NacHeader, NacReader, NacVersionError,
    build_metadata, read_nac, write_nac, write_nac_v2, write_nac_v3,
)
from cq_codec.bitstream.entropy import (
    CategoricalModel, ContextModel, decode, encode, estimate_bits, model_from_bytes,
    model_from_dict,
)

__all__ = [
    "CategoricalModel", "ContextModel", "encode", "decode", "estimate_bits", "model_from_dict",
    "model_from_bytes", "NacError", "NacFormatError", "NacVersionError", "NacChecksumError",
    "NacHeader", "NacReader", "build_metadata", "write_nac", "write_nac_v3", "write_nac_v2", "read_nac",
]
