"""What the exact MaxSim stage reads: token vectors and the token -> document mapping.

* :mod:`.mapping` - ``doc_offsets.npy`` and ``doc_ids.parquet`` (every index has them);
* :mod:`.float16` - ``tokens.f16``, every token vector in float16, memory-mapped.
"""

from .float16 import TOKENS, Float16StoreWriter, open_float16
from .mapping import (
    DOC_IDS,
    OFFSETS,
    DocMapping,
    DocMappingWriter,
    MappingError,
    read_doc_ids,
    read_offsets,
    token_to_doc,
)

__all__ = [
    "DOC_IDS",
    "OFFSETS",
    "TOKENS",
    "DocMapping",
    "DocMappingWriter",
    "Float16StoreWriter",
    "MappingError",
    "open_float16",
    "read_doc_ids",
    "read_offsets",
    "token_to_doc",
]
