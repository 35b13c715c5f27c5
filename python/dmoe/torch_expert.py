"""torch_expert.py -- dmoe.RemoteExpert: a remote expert as a torch.nn.Module (hivemind's RemoteExpert), and
dmoe.get_experts.

The forward sends the inputs to the node and returns its outputs; autograd's backward sends the inputs and
the outputs' gradients and returns the inputs' gradients (torch.autograd.Function). With gradients enabled
the node keeps the forward's activations and the backward hands their handle back (the node then skips
recomputing the forward); under torch.no_grad() the forward asks it to keep nothing. Several inputs are
passed positionally (det_dropout's mask, a transformer's padding mask); integer and boolean inputs get no
gradient. The expert's own weights live and train on the node.
"""
import numpy as np
import torch

from .expert import DEFAULT_TIMEOUT, ExpertHandle, get_expert_handles

__all__ = ["RemoteExpert", "get_experts"]


# hivemind's DUMMY: an input that requires grad, so that the outputs always do and backward always reaches
# the node (which trains the expert) even when no local input needs a gradient
DUMMY = torch.empty(0, requires_grad=True)


class _RemoteExpertCall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dummy, handle, timeout, keep, *inputs):
        arrays = [t.detach().cpu().numpy() for t in inputs]
        # a backward will follow (grad enabled): the node keeps the activations and the backward hands
        # their handle back, so that the node does not recompute the forward
        if keep:
            outputs, ctx.act_handle = handle.forward_keep(*arrays, timeout=timeout)
        else:
            outputs, ctx.act_handle = handle.forward(*arrays, timeout=timeout), 0
        ctx.handle, ctx.timeout = handle, timeout
        ctx.save_for_backward(*inputs)
        return tuple(torch.from_numpy(o).to(inputs[0].device) for o in outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        inputs = ctx.saved_tensors
        arrays = [t.detach().cpu().numpy() for t in inputs]
        gouts = [g.detach().cpu().numpy() if g is not None else np.zeros(1, np.float32) for g in grad_outputs]
        grads = ctx.handle.backward(arrays, gouts, timeout=ctx.timeout, handle=ctx.act_handle)
        result = []
        for i, t in enumerate(inputs):
            if i < len(grads) and t.is_floating_point() and ctx.needs_input_grad[4 + i]:
                result.append(torch.from_numpy(grads[i]).to(dtype=t.dtype, device=t.device))
            else:
                result.append(None)
        return (None, None, None, None, *result)


class RemoteExpert(torch.nn.Module):
    """A remote expert: RemoteExpert(uid, endpoint, dht) calls uid on the node at endpoint (a multiaddr)
    through dht's connections; dmoe.get_experts(dht, uids) finds experts on the DHT. Calling it runs the
    expert on the node; backward runs the expert's backward there (and the node steps its optimizer)."""

    def __init__(self, uid, endpoint=None, dht=None, *, timeout=DEFAULT_TIMEOUT, _handle=None):
        super().__init__()
        if _handle is None:
            if dht is None or endpoint is None:
                raise TypeError("RemoteExpert(uid, endpoint, dht): or use dmoe.get_experts(dht, uids)")
            _handle = ExpertHandle(dht, uid, endpoint)
        self.handle = _handle
        self.uid, self.endpoint, self.timeout = _handle.uid, _handle.endpoint, timeout

    @property
    def info(self):
        return self.handle.info()

    def extra_repr(self):
        return "uid=%r, endpoint=%r" % (self.uid, self.endpoint)

    def forward(self, *args):
        if not args:
            raise TypeError("RemoteExpert needs at least one input")
        outputs = _RemoteExpertCall.apply(DUMMY, self.handle, self.timeout, torch.is_grad_enabled(), *args)
        return outputs[0] if len(outputs) == 1 else outputs


def get_experts(dht, uids, expiration_time=None, return_future=False):
    """hivemind's get_experts: a RemoteExpert per uid found on the DHT, None for the others."""
    return [RemoteExpert(h.uid, _handle=h) if h is not None else None for h in get_expert_handles(dht, uids)]
