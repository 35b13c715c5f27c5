"""test_expert.py -- dmoe.RemoteExpert and the numpy ExpertHandle against a node: forward and backward
equal a local FeedforwardBlock with the node's weights (read from its checkpoint by dmoe.load_checkpoint);
hivemind's test_remote_module_call and test_determinism; many Python threads at once; hivemind's
test_training (a model of two remote experts learns a separable task)."""
import json
import os
import subprocess
import threading
import unittest

import numpy as np
import torch
from torch import nn

import dmoe
from common import checkpointed_ffn_node, separable_task, train_until
from nodes import BUILD, Node, wait_until

H = 16


def backward_cached(node, uid):
    """The node's count of uid's backwards that took their forward's kept activations (dmoe-call info)."""
    out = subprocess.run([os.path.join(BUILD, "dmoe-call"), "--peer", node.endpoint, "info", uid, "--json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)["stats"]["backward_cached"]


def find(dht, uids):
    return wait_until(lambda: (lambda e: e if all(e) else None)(dmoe.get_experts(dht, uids)),
                      what="experts %s on the DHT" % uids)


class TestRemoteExpert(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node, cls.local = checkpointed_ffn_node(cls, H, 2)
        cls.dht = dmoe.DHT(initial_peers=[cls.node.maddr], client_mode=True, start=True)
        cls.addClassCleanup(cls.dht.shutdown)

    @classmethod
    def addCleanup(cls, fn, *args):   # checkpointed_ffn_node registers class-level cleanups here
        cls.addClassCleanup(fn, *args)

    def test_forward_backward_equal_local_feedforward_block(self):
        e0, e1 = find(self.dht, ["expert.0", "expert.1"])
        for expert in (e0, e1):
            cached = backward_cached(self.node, expert.uid)
            ref = self.local[expert.uid]
            x = torch.randn(5, H, requires_grad=True)
            xr = x.detach().clone().requires_grad_(True)
            gy = torch.randn(5, H)
            out = expert(x)
            (out * gy).sum().backward()
            out_ref = ref(xr)
            (out_ref * gy).sum().backward()
            self.assertLess((out - out_ref).abs().max().item(), 1e-5)
            self.assertLess((x.grad - xr.grad).abs().max().item(), 1e-5)
            # the forward kept its activations and the backward brought their handle back
            self.assertEqual(backward_cached(self.node, expert.uid), cached + 1)
            with torch.no_grad():   # no backward will follow: the node keeps nothing
                self.assertLess((expert(x) - out_ref).abs().max().item(), 1e-5)
        # the same through the numpy entry points, without autograd
        h = dmoe.get_expert_handles(self.dht, ["expert.0"])[0]
        x = np.random.randn(3, H).astype(np.float32)
        (y,) = h.forward(x)
        ref = self.local["expert.0"](torch.from_numpy(x)).detach().numpy()
        self.assertLess(np.abs(y - ref).max(), 1e-5)
        self.assertEqual(h.info()["inputs"], [("float32", (H,))])

    def test_remote_module_call(self):
        """hivemind's test_remote_module_call, ported."""
        real_expert, fake_expert = dmoe.get_experts(self.dht, ["expert.0"])[0], \
            dmoe.RemoteExpert("oiasfjiasjf.0", self.node.maddr, self.dht)
        out1 = real_expert(torch.randn(1, H))
        self.assertEqual(out1.shape, (1, H))
        dummy_x = torch.randn(3, H, requires_grad=True)
        out3 = real_expert(dummy_x)
        self.assertEqual(out3.shape, (3, H))
        out3_again = real_expert(dummy_x[1:])
        self.assertTrue(torch.allclose(out3_again, out3[1:], atol=1e-5, rtol=0))
        out3_again.norm().backward()
        self.assertTrue(dummy_x.grad is not None and dummy_x.grad.norm() > 0)
        with self.assertRaises(dmoe.P2PHandlerError) as cm:
            real_expert(torch.randn(3, 11))
        self.assertIn(str(11), repr(cm.exception), "the exception relays the node's error (wrong width)")
        with self.assertRaises(dmoe.P2PHandlerError) as cm:
            fake_expert(dummy_x)
        self.assertIn("oiasfjiasjf.0", str(cm.exception))
        out3_yet_again = real_expert(dummy_x[1:])   # the node is still alive after a malformed request
        self.assertTrue(torch.allclose(out3_yet_again, out3[1:], atol=1e-5, rtol=0))

    def test_many_threads(self):
        (e0,) = find(self.dht, ["expert.0"])
        x = torch.randn(4, H)
        want = self.local["expert.0"](x).detach()
        errors = []

        def work():
            try:
                for _ in range(10):
                    if (e0(x) - want).abs().max().item() >= 1e-5:
                        errors.append("wrong output")
            except Exception as exc:  # noqa: BLE001 -- reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(errors, [])


class TestDeterminism(unittest.TestCase):
    def test_determinism(self, hidden_dim=16):
        """hivemind's test_determinism: det_dropout with a mask input, twice, same outputs and gradients."""
        atol = 1e-5
        xx = torch.randn(32, hidden_dim, requires_grad=True)
        mask = torch.randint(0, 1, (32, hidden_dim))
        node = Node("--expert_cls", "det_dropout", "--hidden_dim", hidden_dim, "--num_experts", "1",
                    "--optimizer", "none", "--update_period", "0.5")
        self.addCleanup(node.stop)
        dht = dmoe.DHT(initial_peers=[node.maddr], start=True)
        self.addCleanup(dht.shutdown)
        (expert,) = find(dht, ["expert.0"])
        out = expert(xx, mask)
        out_rerun = expert(xx, mask)
        (grad,) = torch.autograd.grad(out.sum(), xx, retain_graph=True)
        (grad_rerun,) = torch.autograd.grad(out_rerun.sum(), xx, retain_graph=True)
        self.assertTrue(torch.allclose(out, out_rerun, atol=atol, rtol=0), "Dropout layer outputs are non-deterministic.")
        self.assertTrue(torch.allclose(grad, grad_rerun, atol=atol, rtol=0), "Gradients are non-deterministic.")


class TestTransformerMask(unittest.TestCase):
    def test_padding_mask_input(self):
        """A transformer expert takes [B, S, H] and a key-padding mask [B, S]: a bool mask goes as uint8, gets no
        gradient, and changes the output of the rows it masks."""
        node = Node("--expert_cls", "transformer", "--hidden_dim", "32", "--seq_len", "5", "--dropout", "0",
                    "--num_experts", "1", "--optimizer", "none", "--update_period", "0.5")
        self.addCleanup(node.stop)
        dht = dmoe.DHT(initial_peers=[node.maddr], client_mode=True, start=True)
        self.addCleanup(dht.shutdown)
        (expert,) = find(dht, ["expert.0"])
        self.assertEqual(expert.info["inputs"], [("float32", (5, 32)), ("uint8", (5,))])
        x = torch.randn(2, 5, 32, requires_grad=True)
        mask = torch.zeros(2, 5, dtype=torch.bool)
        mask[1, 3:] = True
        out = expert(x, mask)
        self.assertEqual(out.shape, (2, 5, 32))
        out.sum().backward()
        self.assertEqual(x.grad.shape, x.shape)
        self.assertTrue(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0)
        unmasked = expert(x, torch.zeros(2, 5, dtype=torch.bool))
        self.assertTrue(torch.allclose(unmasked[0], out[0], atol=1e-5))
        self.assertFalse(torch.allclose(unmasked[1], out[1], atol=1e-3))


class TestTraining(unittest.TestCase):
    def test_training(self, max_steps=100, threshold=0.9):
        """hivemind's test_training: nn.Sequential(expert2, ReLU, expert1, Linear) learns to >= 90%."""
        torch.manual_seed(0)
        X_train, y_train = separable_task()
        node = Node("--expert_cls", "ffn", "--hidden_dim", "64", "--num_experts", "2", "--optimizer", "sgd",
                    "--lr", "0.05", "--clip_grad_norm", "1.0", "--update_period", "0.5", "--num_workers", "1")
        self.addCleanup(node.stop)
        dht = dmoe.DHT(initial_peers=[node.maddr], start=True)
        self.addCleanup(dht.shutdown)
        expert1, expert2 = find(dht, ["expert.0", "expert.1"])
        model = nn.Sequential(expert2, nn.ReLU(), expert1, nn.Linear(64, 2))
        accuracy = train_until(model, X_train, y_train, max_steps, threshold)
        self.assertGreaterEqual(accuracy, threshold, "too small accuracy: %s" % accuracy)


if __name__ == "__main__":
    unittest.main()
