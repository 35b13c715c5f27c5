"""common.py -- what several Python tests share: hivemind's FeedforwardBlock in plain torch (the reference the
node's ffn experts must equal), a node whose ffn experts' weights are read back from its checkpoints,
and a small separable classification task in place of sklearn's digits, with hivemind's training loop
for it."""
import os
import shutil
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import dmoe
from nodes import Node, wait_until


@torch.jit.script
def gelu_fast(x):
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class FeedforwardBlock(nn.Module):
    """hivemind/moe/server/layers/common.py's FeedforwardBlock, verbatim."""

    def __init__(self, hid_dim):
        super().__init__()
        self.ffn = nn.Linear(hid_dim, 4 * hid_dim)
        self.ffn_output = nn.Linear(4 * hid_dim, hid_dim)
        self.layer_norm = nn.LayerNorm(hid_dim, eps=1e-12)

    def forward(self, x):
        ffn_output = self.ffn(x)
        ffn_output = gelu_fast(ffn_output)
        ffn_output = self.ffn_output(ffn_output)
        return self.layer_norm(x + ffn_output)


def checkpointed_ffn_node(test, hidden_dim, n, pattern=None, extra=()):
    """Start a node with n ffn experts and no optimizer, wait for its first checkpoints, and return
    (node, {uid: local FeedforwardBlock with the node's weights via dmoe.load_checkpoint})."""
    ckdir = tempfile.mkdtemp(prefix="dmoe-ckpt-")
    test.addCleanup(shutil.rmtree, ckdir, True)
    pattern = pattern or "expert.[0:%d]" % n
    node = Node("--expert_cls", "ffn", "--hidden_dim", hidden_dim, "--num_experts", n, "--expert_pattern", pattern,
                "--update_period", "0.5", "--expiration", "3", "--num_workers", "1", "--optimizer", "none",
                "--checkpoint_dir", ckdir, *extra)
    test.addCleanup(node.stop)
    wait_until(lambda: len([u for u in os.listdir(ckdir) if dmoe.latest_checkpoint(os.path.join(ckdir, u))]) == n,
               what="the node's checkpoints")
    local = {}
    for uid in os.listdir(ckdir):
        block = FeedforwardBlock(hidden_dim)
        block.load_state_dict(dmoe.load_checkpoint(os.path.join(ckdir, uid)))
        local[uid] = block
    return node, local


def separable_task(n=64, dim=64, seed=0):
    """Two classes of non-negative 'pixel' vectors like sklearn's 2-class digits: a class mean per class plus
    noise, rounded and clipped to 0..16. Returns (X float32 [n, dim], y int64 [n])."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(2, dim, generator=g) * 16
    y = torch.arange(n) % 2
    X = (means[y] + 3 * torch.randn(n, dim, generator=g)).round().clamp(0, 16)
    return X, y


def train_until(model, X, y, max_steps, threshold, balance_coef=0.01):
    """hivemind's training loop of test_training.py: SGD (lr 0.05) on the cross-entropy of model(X) -- plus
    balance_coef times the balancing loss when the model returns (outputs, balancing_loss) -- until the
    accuracy reaches threshold or max_steps ran. Returns the last accuracy."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    accuracy = 0.0
    for _ in range(max_steps):
        outputs = model(X)
        loss = 0.0
        if isinstance(outputs, tuple):
            outputs, balancing_loss = outputs
            loss = balance_coef * balancing_loss
        loss = loss + F.cross_entropy(outputs, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        accuracy = (outputs.argmax(dim=1) == y).float().mean().item()
        if accuracy >= threshold:
            break
    return accuracy
