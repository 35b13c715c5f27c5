"""dmoe -- decentralized Mixture-of-Experts from Python: hivemind's client API over libdmoe.

    import dmoe
    dht = dmoe.DHT(initial_peers=["/ip4/127.0.0.1/tcp/40123/p2p/..."], client_mode=True, start=True)
    expert1, expert4 = dmoe.get_experts(dht, ["expert.1", "expert.4"])         # torch.nn.Modules
    moe = dmoe.RemoteMixtureOfExperts(in_features=512, grid_size=(5,), dht=dht, uid_prefix="expert.", k_best=2)

Pure Python over ctypes and numpy (no compiled extension). torch is needed only for the modules
(RemoteExpert, get_experts, RemoteMixtureOfExperts, RemoteSwitchMixtureOfExperts, load_checkpoint); the
numpy entry points (ExpertHandle, get_expert_handles, MixtureOfExperts, MoEBeamSearcher) work without it.
The protocol runs in libdmoe's own loop thread; calls may come from any Python thread.
"""
from ._lib import DMoEError, DMoETimeoutError, DMoEValueError
from .checkpoint import latest_checkpoint, load_checkpoint, load_checkpoint_numpy
from .dht import DHT, ValueWithExpiration, declare_experts, get_dht_time
from .expert import ExpertHandle, get_expert_handles
from .moe import MixtureOfExperts, MoEBeamSearcher, MoEForward

# hivemind's name for a remote error, so that ported code catching it keeps working
P2PHandlerError = DMoEError

_TORCH_NAMES = {"RemoteExpert": "torch_expert", "get_experts": "torch_expert",
                "RemoteMixtureOfExperts": "torch_moe", "RemoteSwitchMixtureOfExperts": "torch_moe"}

__all__ = ["DHT", "ValueWithExpiration", "declare_experts", "get_dht_time", "ExpertHandle", "get_expert_handles",
           "MixtureOfExperts", "MoEBeamSearcher", "MoEForward", "load_checkpoint", "load_checkpoint_numpy",
           "latest_checkpoint", "DMoEError", "DMoETimeoutError", "DMoEValueError", "P2PHandlerError",
           *_TORCH_NAMES]


def __getattr__(name):
    """The torch modules load on first use, so that `import dmoe` works without torch."""
    if name in _TORCH_NAMES:
        import importlib
        mod = importlib.import_module("." + _TORCH_NAMES[name], __name__)
        return getattr(mod, name)
    raise AttributeError("module 'dmoe' has no attribute %r" % name)
