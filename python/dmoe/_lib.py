"""_lib.py -- the ctypes binding of libdmoe (the public C header actors/api/dmoe.h, installed as <dmoe.h>).

Finds and loads libdmoe.so, declares the signatures of the functions the package uses, owns the one
library context of the process (its loop thread), and turns error codes into exceptions that carry the
node's message. Every other module of the package reaches C through here.

The library is looked for, in order: $DMOE_LIB; the path `make install` wrote next to this file
(_libpath.txt); build/libdmoe.so of the source tree this file sits in (python/dmoe/ -> build/); the
system's loader (libdmoe.so.1).
"""
import atexit
import ctypes
import os
import threading
import weakref

__all__ = ["DMoEError", "lib", "ctx", "check", "ERRBUF"]

ERRBUF = 1024

# the codes of runtime/rt_err.h (negative in C)
ENOMEM, EPROTO, ETOOBIG, EINVAL, ENOEXPERT, ENOMETHOD, ESHAPE, ENONFINITE = -1, -2, -3, -4, -5, -6, -7, -8
ETIMEDOUT, ECONN, EOVERLOAD, ESHUTDOWN, EIO, EINTERNAL, ENOTFOUND = -9, -10, -11, -12, -13, -14, -15


class DMoEError(RuntimeError):
    """An error from libdmoe or from a node: .code is the (negative) DMOE code, str(e) the message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class DMoETimeoutError(DMoEError, TimeoutError):
    """No answer within the deadline (DMOE_ETIMEDOUT)."""


class DMoEValueError(DMoEError, ValueError):
    """A bad argument, shape or non-finite value (DMOE_EINVAL, DMOE_ESHAPE, DMOE_ENONFINITE)."""


def _find_library():
    here = os.path.dirname(os.path.abspath(__file__))
    cands = []
    if os.environ.get("DMOE_LIB"):
        cands.append(os.environ["DMOE_LIB"])
    marker = os.path.join(here, "_libpath.txt")
    if os.path.exists(marker):
        with open(marker) as f:
            path = f.read().strip()
        cands.append(path)
        # installed under DESTDIR: the library sits at the same place relative to the package
        cands.append(os.path.normpath(os.path.join(here, "..", "..", "..", os.path.basename(path))))
    cands.append(os.path.normpath(os.path.join(here, "..", "..", "build", "libdmoe.so")))
    for c in cands:
        if os.path.exists(c):
            return c
    return "libdmoe.so.1"


def _declare(L):
    c_int, c_size, c_double, c_float, c_char_p, c_void_p = (
        ctypes.c_int, ctypes.c_size_t, ctypes.c_double, ctypes.c_float, ctypes.c_char_p, ctypes.c_void_p)
    P, i64 = ctypes.POINTER, ctypes.c_int64
    err = [c_char_p, c_size]
    sigs = {
        "dmoe_api_version": (c_int, []),
        "dmoe_strerror": (c_char_p, [c_int]),
        "dmoe_ctx_new": (c_int, [P(c_void_p)] + err),
        "dmoe_ctx_free": (None, [c_void_p]),
        "dmoe_dht_join": (c_int, [c_void_p, P(c_char_p), c_size, c_int, c_char_p, P(c_void_p)] + err),
        "dmoe_dht_join_trusted": (c_int, [c_void_p, P(c_char_p), c_size, c_int, c_char_p, c_char_p, P(c_void_p)] + err),
        "dmoe_dht_join_identity": (c_int, [c_void_p, P(c_char_p), c_size, c_int, c_char_p, c_char_p, c_char_p,
                                           P(c_void_p)] + err),
        "dmoe_dht_maddr": (c_int, [c_void_p, c_char_p, c_size]),
        "dmoe_dht_time": (c_double, []),
        "dmoe_dht_store": (c_int, [c_void_p, c_char_p, c_size, c_char_p, c_size, c_char_p, c_size, c_double] + err),
        "dmoe_dht_get": (c_int, [c_void_p, c_char_p, c_size, c_int, P(c_void_p)] + err),
        "dmoe_value_kind": (c_int, [c_void_p]),
        "dmoe_value_expiration": (c_double, [c_void_p]),
        "dmoe_value_bytes": (c_void_p, [c_void_p, P(c_size)]),
        "dmoe_value_nsubs": (c_size, [c_void_p]),
        "dmoe_value_sub": (c_int, [c_void_p, c_size, P(c_void_p), P(c_size), P(c_void_p), P(c_size), P(c_double)]),
        "dmoe_value_free": (None, [c_void_p]),
        "dmoe_dht_declare_experts": (c_int, [c_void_p, P(c_char_p), c_size, c_char_p, c_double] + err),
        "dmoe_dht_free": (None, [c_void_p]),
        "dmoe_get_experts": (c_int, [c_void_p, P(c_char_p), c_size, P(c_void_p)] + err),
        "dmoe_expert_new": (c_int, [c_void_p, c_char_p, c_char_p, P(c_void_p)] + err),
        "dmoe_expert_uid": (c_char_p, [c_void_p]),
        "dmoe_expert_maddr": (None, [c_void_p, c_char_p, c_size]),
        "dmoe_expert_info": (c_int, [c_void_p, P(c_int), P(c_int), P(c_int), P(c_int), P(i64), c_double] + err),
        "dmoe_expert_forward": (c_int, [c_void_p, c_void_p, c_int, c_double, P(c_void_p)] + err),
        "dmoe_expert_backward": (c_int, [c_void_p, c_void_p, c_int, c_void_p, c_int, c_double, P(c_void_p)] + err),
        "dmoe_expert_forward_keep": (c_int, [c_void_p, c_void_p, c_int, c_double, P(c_void_p),
                                             P(ctypes.c_uint64)] + err),
        "dmoe_expert_backward_with": (c_int, [c_void_p, c_void_p, c_int, c_void_p, c_int, ctypes.c_uint64, c_double,
                                              P(c_void_p)] + err),
        "dmoe_expert_free": (None, [c_void_p]),
        "dmoe_tensors_count": (c_int, [c_void_p]),
        "dmoe_tensors_get": (c_int, [c_void_p, c_int, c_void_p]),
        "dmoe_tensors_free": (None, [c_void_p]),
        "dmoe_beam_search": (c_int, [c_void_p, c_char_p, P(c_int), c_int, P(c_float), i64, c_int, P(c_void_p)] + err),
        "dmoe_beam_count": (c_int, [c_void_p, i64]),
        "dmoe_beam_expert": (c_char_p, [c_void_p, i64, c_int, c_char_p, c_size, P(c_float)]),
        "dmoe_beam_free": (None, [c_void_p]),
        "dmoe_moe_config_init": (None, [c_void_p, c_int]),
        "dmoe_moe_new": (c_int, [c_void_p, c_void_p, P(c_void_p)] + err),
        "dmoe_moe_nparams": (c_size, [c_void_p]),
        "dmoe_moe_get_params": (c_int, [c_void_p, P(c_float), c_size]),
        "dmoe_moe_set_params": (c_int, [c_void_p, P(c_float), c_size]),
        "dmoe_moe_utilization": (c_int, [c_void_p, P(c_float), c_size]),
        "dmoe_moe_forward": (c_int, [c_void_p, P(c_float), P(c_float), i64, c_void_p, c_int, P(c_void_p)] + err),
        "dmoe_moe_fwd_output": (P(c_float), [c_void_p, P(i64), P(c_int)]),
        "dmoe_moe_fwd_balancing_loss": (c_float, [c_void_p]),
        "dmoe_moe_fwd_stats": (None, [c_void_p, P(c_int), P(c_int)]),
        "dmoe_moe_fwd_expert_weight": (c_float, [c_void_p, i64, c_char_p]),
        "dmoe_moe_backward": (c_int, [c_void_p, P(c_float), c_float, P(c_float), P(c_float)] + err),
        "dmoe_moe_fwd_free": (None, [c_void_p]),
        "dmoe_moe_free": (None, [c_void_p]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(L, name)
        fn.restype = res
        fn.argtypes = args


class Tensor(ctypes.Structure):
    """dmoe_tensor: a view of a dense row-major tensor."""
    _fields_ = [("dtype", ctypes.c_int), ("ndim", ctypes.c_int), ("shape", ctypes.c_int64 * 8),
                ("data", ctypes.c_void_p)]


class MoEConfig(ctypes.Structure):
    """dmoe_moe_config, field for field."""
    _fields_ = [("in_features", ctypes.c_int), ("out_features", ctypes.c_int), ("ndim", ctypes.c_int),
                ("grid_size", ctypes.c_int * 8), ("uid_prefix", ctypes.c_char * 256), ("k_best", ctypes.c_int),
                ("k_min", ctypes.c_int), ("forward_timeout", ctypes.c_double),
                ("timeout_after_k_min", ctypes.c_double), ("backward_k_min", ctypes.c_int),
                ("backward_timeout", ctypes.c_double), ("detect_anomalies", ctypes.c_int),
                ("allow_zero_outputs", ctypes.c_int), ("seed", ctypes.c_uint64), ("is_switch", ctypes.c_int),
                ("jitter_eps", ctypes.c_double), ("grid_dropout", ctypes.c_double),
                ("utilization_alpha", ctypes.c_double)]


lib = ctypes.CDLL(_find_library())
_declare(lib)
if lib.dmoe_api_version() != 1:
    raise ImportError("libdmoe API version %d, this package speaks 1" % lib.dmoe_api_version())

_ctx = None
_ctx_lock = threading.Lock()
_closed = False
_live_dhts = weakref.WeakSet()


def errbuf():
    return ctypes.create_string_buffer(ERRBUF)


def check(rc, err=None, what=None):
    """Raise the exception for a non-zero rc, with the message in err (a ctypes buffer) or the code's name."""
    if rc == 0:
        return
    msg = err.value.decode("utf-8", "replace") if err is not None and err.value else \
        lib.dmoe_strerror(rc).decode()
    if what:
        msg = "%s: %s" % (what, msg)
    if rc == ETIMEDOUT:
        raise DMoETimeoutError(rc, msg)
    if rc in (EINVAL, ESHAPE, ENONFINITE):
        raise DMoEValueError(rc, msg)
    raise DMoEError(rc, msg)


def ctx():
    """The process's library context (started on first use)."""
    global _ctx
    with _ctx_lock:
        if _closed:
            raise DMoEError(ESHUTDOWN, "the dmoe library was shut down (interpreter exit)")
        if _ctx is None:
            p = ctypes.c_void_p()
            e = errbuf()
            check(lib.dmoe_ctx_new(ctypes.byref(p), e, ERRBUF), e)
            _ctx = p
        return _ctx


def closed():
    """Whether the interpreter is exiting: handles are then left to the process's end."""
    return _closed


def track_dht(d):
    _live_dhts.add(d)


@atexit.register
def _shutdown():
    global _closed
    for d in list(_live_dhts):
        try:
            d.shutdown()
        except Exception:
            pass
    _closed = True
