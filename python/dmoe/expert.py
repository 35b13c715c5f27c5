"""expert.py -- remote experts with numpy arrays: ExpertHandle (forward, backward, info) and
get_expert_handles. No torch needed; dmoe.RemoteExpert (torch_expert.py) is built on these.

A handle names an expert (uid) on a host (multiaddr) and calls it through its DHT's connections. Arrays
are converted to the expert's input dtypes (float32, or uint8 for masks) as its schema says; results are
fresh numpy arrays the caller owns.
"""
import ctypes

import numpy as np

from . import _lib
from ._lib import ERRBUF, Tensor, check, errbuf, lib

__all__ = ["ExpertHandle", "get_expert_handles"]

DEFAULT_TIMEOUT = 30.0


def _to_views(arrays, dtypes=None):
    """C tensor views over contiguous copies of arrays (the copies are returned too, to keep them alive)."""
    keep, views = [], (Tensor * max(1, len(arrays)))()
    for i, a in enumerate(arrays):
        want = np.uint8 if dtypes is not None and i < len(dtypes) and dtypes[i] == 1 else None
        a = np.asarray(a)
        if want is None:
            want = np.uint8 if a.dtype in (np.uint8, np.bool_) else np.float32
        a = np.ascontiguousarray(a, dtype=want)
        if a.ndim < 1 or a.ndim > 8:
            raise _lib.DMoEValueError(_lib.EINVAL, "tensor %d has %d dimensions (1 to 8)" % (i, a.ndim))
        keep.append(a)
        v = views[i]
        v.dtype = 1 if want is np.uint8 else 0
        v.ndim = a.ndim
        for d, s in enumerate(a.shape):
            v.shape[d] = s
        v.data = a.ctypes.data
    return views, keep


def _from_tensors(ts):
    """Copy a dmoe_tensors list into numpy arrays and free it."""
    try:
        out = []
        for i in range(lib.dmoe_tensors_count(ts)):
            t = Tensor()
            lib.dmoe_tensors_get(ts, i, ctypes.byref(t))
            shape = tuple(t.shape[d] for d in range(t.ndim))
            dt = np.uint8 if t.dtype == 1 else np.float32
            n = int(np.prod(shape)) if shape else 1
            if n == 0 or not t.data:
                out.append(np.zeros(shape, dt))
                continue
            buf = (ctypes.c_char * (n * np.dtype(dt).itemsize)).from_address(t.data)
            out.append(np.frombuffer(buf, dtype=dt).reshape(shape).copy())
        return out
    finally:
        lib.dmoe_tensors_free(ts)


class ExpertHandle:
    """One remote expert: uid on the host at maddr, called through dht's connections."""

    def __init__(self, dht, uid, maddr=None, _handle=None):
        self.dht = dht   # keeps the DHT object alive while the handle is
        if _handle is None:
            h = ctypes.c_void_p()
            e = errbuf()
            check(lib.dmoe_expert_new(dht._handle(), uid.encode(), str(maddr).encode(), ctypes.byref(h), e, ERRBUF), e)
            _handle = h
        self._h = _handle
        self.uid = lib.dmoe_expert_uid(self._h).decode()
        buf = ctypes.create_string_buffer(256)
        lib.dmoe_expert_maddr(self._h, buf, 256)
        self.endpoint = buf.value.decode()
        self._schema = None

    def __repr__(self):
        return "ExpertHandle(uid=%r, endpoint=%r)" % (self.uid, self.endpoint)

    def info(self, timeout=DEFAULT_TIMEOUT):
        """The expert's schema: {"n_inputs", "n_outputs", "inputs": [(dtype, row_shape), ...]} (cached)."""
        if self._schema is None:
            n_in, n_out = ctypes.c_int(), ctypes.c_int()
            dt, nd, dims = (ctypes.c_int * 4)(), (ctypes.c_int * 4)(), (ctypes.c_int64 * 16)()
            e = errbuf()
            check(lib.dmoe_expert_info(self._h, ctypes.byref(n_in), ctypes.byref(n_out), dt, nd, dims, float(timeout),
                                       e, ERRBUF), e)
            ins = [("uint8" if dt[i] == 1 else "float32", tuple(dims[i * 4 + k] for k in range(nd[i])))
                   for i in range(n_in.value)]
            self._schema = {"n_inputs": n_in.value, "n_outputs": n_out.value, "inputs": ins}
        return self._schema

    def input_dtypes(self):
        return [1 if dt == "uint8" else 0 for dt, _ in self.info()["inputs"]]

    def forward(self, *inputs, timeout=DEFAULT_TIMEOUT):
        """Run the expert on inputs (row-aligned arrays). Returns the list of its outputs."""
        views, keep = _to_views(inputs, self.input_dtypes())
        ts = ctypes.c_void_p()
        e = errbuf()
        check(lib.dmoe_expert_forward(self._h, views, len(inputs), float(timeout), ctypes.byref(ts), e, ERRBUF), e)
        return _from_tensors(ts)

    def forward_keep(self, *inputs, timeout=DEFAULT_TIMEOUT):
        """forward for inputs whose backward will follow: the node keeps the activations. Returns (outputs,
        handle); backward(..., handle=handle) then skips recomputing the forward (0: the node kept none)."""
        views, keep = _to_views(inputs, self.input_dtypes())
        ts, handle = ctypes.c_void_p(), ctypes.c_uint64(0)
        e = errbuf()
        check(lib.dmoe_expert_forward_keep(self._h, views, len(inputs), float(timeout), ctypes.byref(ts),
                                           ctypes.byref(handle), e, ERRBUF), e)
        return _from_tensors(ts), handle.value

    def backward(self, inputs, grad_outputs, timeout=DEFAULT_TIMEOUT, handle=0):
        """Send the inputs and the gradients of the outputs; returns the gradients of the inputs (the node
        then steps the expert's optimizer). handle: forward_keep's, for these inputs (0: none)."""
        views, keep = _to_views(inputs, self.input_dtypes())
        gviews, gkeep = _to_views(grad_outputs)
        ts = ctypes.c_void_p()
        e = errbuf()
        check(lib.dmoe_expert_backward_with(self._h, views, len(inputs), gviews, len(grad_outputs), int(handle),
                                            float(timeout), ctypes.byref(ts), e, ERRBUF), e)
        return _from_tensors(ts)

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h is not None and not _lib.closed():
            lib.dmoe_expert_free(h)


def get_expert_handles(dht, uids):
    """Find uids on the DHT: one ExpertHandle per uid, None for those nobody declares."""
    uids = list(uids)
    if not uids:
        return []
    arr = (ctypes.c_char_p * len(uids))(*[u.encode() for u in uids])
    out = (ctypes.c_void_p * len(uids))()
    e = errbuf()
    check(lib.dmoe_get_experts(dht._handle(), arr, len(uids), out, e, ERRBUF), e)
    return [ExpertHandle(dht, u, _handle=ctypes.c_void_p(h)) if h else None for u, h in zip(uids, out)]
