"""moe.py -- the Mixture-of-Experts pieces with numpy arrays: MoEBeamSearcher (hivemind's beam search over
the DHT) and MixtureOfExperts (a layer's forward and backward, for inference or training without torch).

The protocol logic -- beam search, dispatch with k_min and timeouts, anomaly masking, the softmax over the
experts that answered, the backward -- is libdmoe's (actors/moe); this file only moves arrays. The
gating parameters W[total, in_features], b[total] (total = sum(grid_size)) are passed to every forward
and their gradient comes back from every backward, so whoever trains them owns them.
"""
import ctypes

import numpy as np

from . import _lib
from ._lib import ERRBUF, MoEConfig, check, errbuf, lib
from .expert import ExpertHandle, _to_views

__all__ = ["MoEBeamSearcher", "MixtureOfExperts", "MoEForward"]

_FP = ctypes.POINTER(ctypes.c_float)


def _fptr(a):
    return a.ctypes.data_as(_FP)


class MoEBeamSearcher:
    """Finds the best live experts of a grid "<uid_prefix><c0>.<c1>..." for given per-dimension scores."""

    def __init__(self, dht, uid_prefix, grid_size, **_ignored):
        if not uid_prefix.endswith("."):
            uid_prefix += "."
        self.dht, self.uid_prefix, self.grid_size = dht, uid_prefix, tuple(int(g) for g in grid_size)
        self.total_grid_size = sum(self.grid_size)

    def batch_find_best_experts(self, batch_grid_scores, beam_size):
        """batch_grid_scores: one [batch, grid_size[i]] array per dimension. Returns, per sample, its up to
        beam_size best experts (ExpertHandle), best first."""
        scores = np.ascontiguousarray(np.concatenate([np.asarray(s, np.float32) for s in batch_grid_scores], -1),
                                      np.float32)
        if scores.ndim != 2 or scores.shape[1] != self.total_grid_size:
            raise _lib.DMoEValueError(_lib.EINVAL, "scores must be [batch, %d]" % self.total_grid_size)
        grid = (ctypes.c_int * len(self.grid_size))(*self.grid_size)
        b = ctypes.c_void_p()
        e = errbuf()
        check(lib.dmoe_beam_search(self.dht._handle(), self.uid_prefix.encode(), grid, len(self.grid_size),
                                   _fptr(scores), scores.shape[0], int(beam_size), ctypes.byref(b), e, ERRBUF), e)
        try:
            out = []
            maddr = ctypes.create_string_buffer(256)
            for s in range(scores.shape[0]):
                row = []
                for j in range(lib.dmoe_beam_count(b, s)):
                    uid = lib.dmoe_beam_expert(b, s, j, maddr, 256, None).decode()
                    row.append(ExpertHandle(self.dht, uid, maddr.value.decode()))
                out.append(row)
            return out
        finally:
            lib.dmoe_beam_free(b)

    def find_best_experts(self, grid_scores, beam_size):
        """grid_scores: one 1-D array per dimension (a single sample)."""
        return self.batch_find_best_experts([np.asarray(s)[None] for s in grid_scores], beam_size)[0]


class MoEForward:
    """What one forward of a MixtureOfExperts produced: output [B, D], balancing_loss (switch), the experts
    chosen and answering; backward() runs the matching backward."""

    def __init__(self, layer, handle):
        self.layer, self._h = layer, handle
        B, D = ctypes.c_int64(), ctypes.c_int()
        p = lib.dmoe_moe_fwd_output(handle, ctypes.byref(B), ctypes.byref(D))
        self.output = np.ctypeslib.as_array(p, shape=(B.value, D.value)).copy()
        self.balancing_loss = float(lib.dmoe_moe_fwd_balancing_loss(handle))
        c, a = ctypes.c_int(), ctypes.c_int()
        lib.dmoe_moe_fwd_stats(handle, ctypes.byref(c), ctypes.byref(a))
        self.experts_chosen, self.experts_answered = c.value, a.value

    def expert_weight(self, sample, uid):
        """The weight this forward gave expert uid in the sample (0 if it was not used)."""
        return float(lib.dmoe_moe_fwd_expert_weight(self._h, int(sample), uid.encode()))

    def backward(self, grad_output, balance_coef=0.0):
        """Send grad_output [B, D] back through the experts that answered. Returns (grad_input [B, in],
        grad_params [nparams]); balance_coef is the gradient of the objective with respect to the switch
        layer's balancing loss."""
        gy = np.ascontiguousarray(grad_output, np.float32)
        if gy.shape != self.output.shape:
            raise _lib.DMoEValueError(_lib.EINVAL, "grad_output must have shape %s" % (self.output.shape,))
        gx = np.zeros((self.output.shape[0], self.layer.in_features), np.float32)
        gp = np.zeros(self.layer.nparams, np.float32)
        e = errbuf()
        check(lib.dmoe_moe_backward(self._h, _fptr(gy), float(balance_coef), _fptr(gx), _fptr(gp), e, ERRBUF), e)
        return gx, gp

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h is not None and not _lib.closed():
            lib.dmoe_moe_fwd_free(h)


class MixtureOfExperts:
    """A Mixture-of-Experts layer over the experts of dht (hivemind's RemoteMixtureOfExperts arguments; is_switch
    for RemoteSwitchMixtureOfExperts). params: the gating parameters (W row-major then b, float32)."""

    def __init__(self, *, in_features, grid_size, dht, uid_prefix, k_best=None, k_min=None, forward_timeout=None,
                 timeout_after_k_min=None, backward_k_min=None, backward_timeout=None, detect_anomalies=False,
                 allow_zero_outputs=None, is_switch=False, jitter_eps=1e-2, grid_dropout=1.0,
                 utilization_alpha=0.9, out_features=0, seed=0):
        grid_size = tuple(int(g) for g in grid_size)
        c = MoEConfig()
        lib.dmoe_moe_config_init(ctypes.byref(c), int(bool(is_switch)))
        c.in_features, c.out_features, c.ndim = int(in_features), int(out_features), len(grid_size)
        if not 1 <= len(grid_size) <= 8:
            raise _lib.DMoEValueError(_lib.EINVAL, "grid_size needs 1 to 8 dimensions")
        for i, g in enumerate(grid_size):
            c.grid_size[i] = g
        if not uid_prefix.endswith("."):
            uid_prefix += "."
        c.uid_prefix = uid_prefix.encode()
        if k_best is not None:
            c.k_best = int(k_best)
        # hivemind's switch layer defaults: k_min 0, backward_k_min 0, allow_zero_outputs True
        c.k_min = int(k_min) if k_min is not None else (0 if is_switch else 1)
        c.backward_k_min = int(backward_k_min) if backward_k_min is not None else (0 if is_switch else 1)
        c.allow_zero_outputs = int(bool(allow_zero_outputs if allow_zero_outputs is not None else is_switch))
        c.forward_timeout = float(forward_timeout) if forward_timeout is not None else 0.0
        c.backward_timeout = float(backward_timeout) if backward_timeout is not None else 0.0
        c.timeout_after_k_min = float(timeout_after_k_min) if timeout_after_k_min is not None else -1.0
        c.detect_anomalies = int(bool(detect_anomalies))
        c.seed = int(seed)
        c.jitter_eps, c.grid_dropout, c.utilization_alpha = float(jitter_eps), float(grid_dropout), float(utilization_alpha)
        self.dht, self.in_features, self.grid_size, self.uid_prefix = dht, int(in_features), grid_size, uid_prefix
        self.is_switch = bool(is_switch)
        h = ctypes.c_void_p()
        e = errbuf()
        check(lib.dmoe_moe_new(dht._handle(), ctypes.byref(c), ctypes.byref(h), e, ERRBUF), e)
        self._h = h
        self.nparams = lib.dmoe_moe_nparams(h)
        self.k_best = c.k_best
        self.last_forward = None   # the MoEForward of the last call (its experts_chosen / experts_answered)

    @property
    def params(self):
        """A copy of the layer's current gating parameters."""
        p = np.zeros(self.nparams, np.float32)
        check(lib.dmoe_moe_get_params(self._h, _fptr(p), self.nparams))
        return p

    @params.setter
    def params(self, value):
        p = np.ascontiguousarray(value, np.float32).reshape(-1)
        check(lib.dmoe_moe_set_params(self._h, _fptr(p), p.size))

    def utilization(self):
        """The switch layer's grid utilisation average (sum(grid_size) floats)."""
        u = np.zeros(sum(self.grid_size), np.float32)
        check(lib.dmoe_moe_utilization(self._h, _fptr(u), u.size))
        return u

    def forward(self, x, *extra, params=None):
        """Run the layer on x [B, in_features] (extra: the experts' further inputs, row-aligned). params, when
        given, are loaded first. Returns a MoEForward."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise _lib.DMoEValueError(_lib.EINVAL, "input must be [batch, %d], got %s" % (self.in_features, x.shape))
        pp = None
        if params is not None:
            params = np.ascontiguousarray(params, np.float32).reshape(-1)
            if params.size != self.nparams:
                raise _lib.DMoEValueError(_lib.EINVAL, "params must hold %d floats" % self.nparams)
            pp = _fptr(params)
        views, keep = _to_views(extra)
        f = ctypes.c_void_p()
        e = errbuf()
        check(lib.dmoe_moe_forward(self._h, pp, _fptr(x), x.shape[0], views if extra else None, len(extra),
                                   ctypes.byref(f), e, ERRBUF), e)
        self.last_forward = MoEForward(self, f)
        return self.last_forward

    def __call__(self, x, *extra):
        return self.forward(x, *extra).output

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h is not None and not _lib.closed():
            lib.dmoe_moe_free(h)


def __getattr__(name):
    """hivemind code says hivemind.moe.get_experts / hivemind.moe.RemoteMixtureOfExperts: the same names work
    as dmoe.moe.<name> (loaded with torch on first use)."""
    if name in ("RemoteExpert", "get_experts"):
        from . import torch_expert
        return getattr(torch_expert, name)
    if name in ("RemoteMixtureOfExperts", "RemoteSwitchMixtureOfExperts"):
        from . import torch_moe
        return getattr(torch_moe, name)
    raise AttributeError("module 'dmoe.moe' has no attribute %r" % name)
