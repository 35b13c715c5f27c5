"""checkpoint.py -- dmoe.load_checkpoint: a node's safetensors checkpoint as a torch state_dict (or numpy
arrays), without the safetensors package (Debian has none).

The format: 8 bytes little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
"__metadata__" optional, then the data. A node writes DIR/<uid>/step-<N>.safetensors with the state_dict
names of hivemind's modules (README "Checkpoints"); the optimizer's state is under "optimizer.".
"""
import json
import os
import re
import struct

import numpy as np

__all__ = ["load_checkpoint", "load_checkpoint_numpy", "latest_checkpoint"]

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 << 20


def latest_checkpoint(expert_dir):
    """The newest step-N.safetensors file of a node's expert folder DIR/<uid>, or None."""
    best, best_step = None, -1
    for name in os.listdir(expert_dir):
        m = re.fullmatch(r"step-(\d+)\.safetensors", name)
        if m and int(m.group(1)) > best_step:
            best, best_step = os.path.join(expert_dir, name), int(m.group(1))
    return best


def load_checkpoint_numpy(path, include_optimizer=False):
    """Read a safetensors file (or the newest checkpoint of an expert folder) into {name: numpy array} and
    its metadata: returns (arrays, metadata)."""
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError("no step-N.safetensors checkpoint in %s" % path)
        path = found
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("%s: not a safetensors file (too short)" % path)
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ValueError("%s: safetensors header of %d bytes does not fit the file" % (path, n))
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, d in header.items():
        if not include_optimizer and name.startswith("optimizer."):
            continue
        dt = _DTYPES.get(d.get("dtype"))
        if dt is None:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, d.get("dtype")))
        shape = tuple(int(s) for s in d["shape"])
        b, e = (int(x) for x in d["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= b <= e <= len(body) or e - b != count * np.dtype(dt).itemsize:
            raise ValueError("%s: tensor %s has bad data offsets" % (path, name))
        out[name] = np.frombuffer(body[b:e], dtype=dt).reshape(shape).copy()
    return out, meta


def load_checkpoint(path, include_optimizer=False):
    """A node's checkpoint as an ordered torch state_dict: module.load_state_dict(load_checkpoint(path)).
    path: a .safetensors file or an expert folder DIR/<uid> (its newest checkpoint)."""
    import torch
    from collections import OrderedDict
    arrays, _ = load_checkpoint_numpy(path, include_optimizer)
    return OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items())
