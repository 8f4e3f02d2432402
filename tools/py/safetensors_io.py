"""Minimal safetensors reader (stdlib + numpy) shared by graft's Python reference and benchmark scripts.

Import it after putting this folder on sys.path, relative to the importing script:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "<..>", "tools", "py"))
    import safetensors_io
"""
import json
import struct

import numpy as np

# safetensors dtype -> numpy dtype (BF16 is widened to float32 exactly; numpy has no bfloat16).
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_raw(path):
    """(entries, data): the header without __metadata__ (name -> {dtype, shape, data_offsets}) in file
    order, and the bytes of the data section."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    return {k: v for k, v in hdr.items() if k != "__metadata__"}, data


def to_numpy(info, data):
    """One tensor as a writable, contiguous numpy array of its own dtype (BF16 -> float32)."""
    b, e = info["data_offsets"]
    raw = data[b:e]
    if info["dtype"] == "BF16":
        a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        a = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).copy()
    return a.reshape(info["shape"])


def load(path, dtypes=None):
    """{name: numpy array} of every tensor in the file, in file order. With `dtypes` (safetensors
    dtype names), an AssertionError names the first tensor dtype outside it."""
    entries, data = read_raw(path)
    out = {}
    for k, v in entries.items():
        if dtypes is not None:
            assert v["dtype"] in dtypes, v["dtype"]
        out[k] = to_numpy(v, data)
    return out
