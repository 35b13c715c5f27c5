"""torch_moe.py -- dmoe.RemoteMixtureOfExperts and dmoe.RemoteSwitchMixtureOfExperts: hivemind's layers as
torch.nn.Modules over libdmoe's MoE layer.

The gating projection is an ordinary nn.Linear (self.proj) that the user's optimizer trains. Each forward
hands its current weight and bias to the C layer (which computes the gating, the beam search, the
dispatch and the softmax combination exactly as hivemind does) inside one torch.autograd.Function whose
backward sends the output gradient back through the experts and returns the gradients of the input and
of proj's weight and bias, computed by the C layer. The switch layer also returns its load-balancing
loss; the gradient autograd gives that loss (the coefficient the user scaled it by) goes to the C
backward as balance_coef.
"""
import numpy as np
import torch
from torch import nn

from .moe import MixtureOfExperts, MoEBeamSearcher

__all__ = ["RemoteMixtureOfExperts", "RemoteSwitchMixtureOfExperts"]


class _MoECall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, n_extra, x, weight, bias, *extra):
        params = torch.cat([weight.detach().reshape(-1), bias.detach().reshape(-1)]).float().cpu().numpy()
        extras = [e.detach().cpu().numpy() for e in extra]
        fwd = layer.forward(x.detach().float().cpu().numpy(), *extras, params=params)
        ctx.fwd, ctx.x_dtype, ctx.device = fwd, x.dtype, x.device
        ctx.w_shape, ctx.n_extra = weight.shape, n_extra
        out = torch.from_numpy(fwd.output).to(device=x.device)
        return out, torch.tensor(fwd.balancing_loss, dtype=torch.float32, device=x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_balance):
        gy = grad_out.detach().float().cpu().numpy() if grad_out is not None else np.zeros_like(ctx.fwd.output)
        coef = float(grad_balance) if grad_balance is not None else 0.0
        gx, gp = ctx.fwd.backward(gy, balance_coef=coef)
        ctx.fwd = None   # frees the C forward
        nw = int(np.prod(ctx.w_shape))
        gw = torch.from_numpy(gp[:nw].reshape(tuple(ctx.w_shape))).to(ctx.device)
        gb = torch.from_numpy(gp[nw:].copy()).to(ctx.device)
        return (None, None, torch.from_numpy(gx).to(dtype=ctx.x_dtype, device=ctx.device), gw, gb,
                *([None] * ctx.n_extra))


class RemoteMixtureOfExperts(nn.Module):
    """hivemind.RemoteMixtureOfExperts: a gating function (self.proj) picks each sample's k_best live
    experts of the grid "<uid_prefix><c0>.<c1>..." on the DHT, the sample goes to them, and their outputs
    are averaged with softmax weights over the experts that answered."""

    _is_switch = False

    def __init__(self, *, in_features, grid_size, dht, uid_prefix, k_best, k_min=1, forward_timeout=None,
                 timeout_after_k_min=None, backward_k_min=1, backward_timeout=None, detect_anomalies=False,
                 allow_zero_outputs=False, **kwargs):
        super().__init__()
        self._init_common(in_features=in_features, grid_size=grid_size, dht=dht, uid_prefix=uid_prefix,
                          k_best=k_best, k_min=k_min, forward_timeout=forward_timeout,
                          timeout_after_k_min=timeout_after_k_min, backward_k_min=backward_k_min,
                          backward_timeout=backward_timeout, detect_anomalies=detect_anomalies,
                          allow_zero_outputs=allow_zero_outputs, **kwargs)

    def _init_common(self, *, in_features, grid_size, dht, uid_prefix, k_best, k_min, forward_timeout,
                     timeout_after_k_min, backward_k_min, backward_timeout, detect_anomalies, allow_zero_outputs,
                     **switch):
        grid_size = tuple(int(g) for g in grid_size)
        self.dht = dht
        self.beam_search = MoEBeamSearcher(dht, uid_prefix, grid_size)
        self.k_best, self.k_min, self.backward_k_min = k_best, k_min, backward_k_min
        self.forward_timeout, self.backward_timeout = forward_timeout, backward_timeout
        self.timeout_after_k_min = timeout_after_k_min
        self.detect_anomalies, self.allow_zero_outputs = detect_anomalies, allow_zero_outputs
        self.proj = nn.Linear(in_features, self.beam_search.total_grid_size)
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())   # the C layer's jitter and grid dropout follow torch's seed
        self._layer = MixtureOfExperts(
            in_features=in_features, grid_size=grid_size, dht=dht, uid_prefix=uid_prefix, k_best=k_best, k_min=k_min,
            forward_timeout=forward_timeout, timeout_after_k_min=timeout_after_k_min, backward_k_min=backward_k_min,
            backward_timeout=backward_timeout, detect_anomalies=detect_anomalies,
            allow_zero_outputs=allow_zero_outputs, is_switch=self._is_switch, seed=seed, **switch)

    def _run(self, input, args):
        if input.ndim != 2:
            raise ValueError("input must be [batch, in_features]; got shape %s" % (tuple(input.shape),))
        out, balancing_loss = _MoECall.apply(self._layer, len(args), input, self.proj.weight, self.proj.bias, *args)
        return out, balancing_loss

    @property
    def last_forward(self):
        """The last forward's MoEForward: experts_chosen, experts_answered, expert_weight(sample, uid)."""
        return self._layer.last_forward

    def forward(self, input, *args, **kwargs):
        """input [batch, in_features] (args: the experts' further inputs, row-aligned) -> [batch, out]."""
        out, _ = self._run(input, args)
        return out

    def compute_expert_scores(self, grid_scores, batch_experts):
        """hivemind's compute_expert_scores: per sample, the sum of each chosen expert's coordinates' scores
        (autograd-friendly), padded with -inf to the longest row."""
        prefix = self.beam_search.uid_prefix
        k = max([len(row) for row in batch_experts] + [0])
        rows = []
        for b, row in enumerate(batch_experts):
            scores = []
            for e in row:
                coords = [int(c) for c in e.uid[len(prefix):].split(".")]
                scores.append(sum(grid_scores[d][b, c] for d, c in enumerate(coords)))
            pad = [torch.tensor(float("-inf"), device=grid_scores[0].device)] * (k - len(scores))
            rows.append(torch.stack(scores + pad) if scores or pad else torch.zeros(0))
        return torch.stack(rows)


class RemoteSwitchMixtureOfExperts(RemoteMixtureOfExperts):
    """hivemind.RemoteSwitchMixtureOfExperts: top-1 routing with a per-dimension softmax, jitter, grid
    dropout and a utilisation average; forward returns (output, balancing_loss) and adds the input to the
    output (residual)."""

    _is_switch = True

    def __init__(self, *, grid_size, utilization_alpha=0.9, grid_dropout=1.0, jitter_eps=1e-2, k_best=1, k_min=0,
                 backward_k_min=0, allow_zero_outputs=True, in_features, dht, uid_prefix, forward_timeout=None,
                 timeout_after_k_min=None, backward_timeout=None, detect_anomalies=False, **kwargs):
        nn.Module.__init__(self)
        self.utilization_alpha, self.grid_dropout, self.jitter_eps = utilization_alpha, grid_dropout, jitter_eps
        self._init_common(in_features=in_features, grid_size=grid_size, dht=dht, uid_prefix=uid_prefix,
                          k_best=k_best, k_min=k_min, forward_timeout=forward_timeout,
                          timeout_after_k_min=timeout_after_k_min, backward_k_min=backward_k_min,
                          backward_timeout=backward_timeout, detect_anomalies=detect_anomalies,
                          allow_zero_outputs=allow_zero_outputs, utilization_alpha=utilization_alpha,
                          grid_dropout=grid_dropout, jitter_eps=jitter_eps)

    @property
    def grid_utilization(self):
        """The utilisation average the balancing loss uses (as hivemind's buffer of that name)."""
        return torch.from_numpy(self._layer.utilization())

    def forward(self, input, *args, **kwargs):
        return self._run(input, args)
