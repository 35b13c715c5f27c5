"""test_trusted.py -- dmoe.DHT(trusted_keys=PATH), a private swarm from Python: an honest dmoe-node with
--identity_path and --trusted_keys (its own public key in the file) and an impostor node with another key
declaring the same uid and one more of the same grid. A client holding the trusted keys finds, beam-searches
and calls only the honest node's expert; a client without them sees the impostor; a bad keys file raises
with the library's message naming the file."""
import os
import re
import shutil
import tempfile
import unittest

import numpy as np

import dmoe
from nodes import Node, wait_until

FFN = ("--expert_cls", "ffn", "--hidden_dim", "16", "--update_period", "0.5", "--expiration", "3",
       "--num_workers", "1", "--optimizer", "none")


def port_of(handle):
    return int(handle.endpoint.split("/tcp/")[1].split("/")[0]) if handle else 0


class TestTrustedKeys(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dmoe-pytrust-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.keys = os.path.join(self.dir, "trusted_keys")

    def start_honest(self):
        """The honest node: a first run creates its identity and logs its public key, which goes into the
        keys file; the node then runs again with that identity in the private swarm."""
        ident = os.path.join(self.dir, "honest.key")
        first = Node(*FFN, "--num_experts", "1", "--identity_path", ident)
        pk = re.search(r"DHT public key ([0-9a-f]{64})", first.text()).group(1)
        first.stop()
        with open(self.keys, "w") as f:
            f.write("# the lab\n%s  # honest node\n" % pk)
        node = Node(*FFN, "--num_experts", "1", "--expert_pattern", "expert.[0:1]", "--identity_path", ident,
                    "--trusted_keys", self.keys)
        self.addCleanup(node.stop)
        return node

    def test_a_trusted_client_uses_only_the_trusted_node(self):
        honest = self.start_honest()
        impostor = Node(*FFN, "--num_experts", "2", "--expert_pattern", "expert.[0:2]", "--identity_path",
                        os.path.join(self.dir, "impostor.key"), "--initial_peers", honest.maddr)
        self.addCleanup(impostor.stop)

        open_dht = dmoe.DHT(initial_peers=[honest.maddr], client_mode=True)
        self.addCleanup(open_dht.shutdown)
        wait_until(lambda: port_of(dmoe.get_expert_handles(open_dht, ["expert.1"])[0]) == impostor.port,
                   what="an open client to see the impostor's expert")

        dht = dmoe.DHT(initial_peers=[honest.maddr], client_mode=True, trusted_keys=self.keys)
        self.addCleanup(dht.shutdown)
        wait_until(lambda: dmoe.get_expert_handles(dht, ["expert.0"])[0], what="the honest expert")
        for _ in range(3):
            e0, e1 = dmoe.get_expert_handles(dht, ["expert.0", "expert.1"])
            self.assertEqual(port_of(e0), honest.port)
            self.assertIsNone(e1, "the impostor's own expert is not found")
        out = e0.forward(np.ones((2, 16), np.float32))
        self.assertEqual(out[0].shape, (2, 16))
        # the beam search over the grid: scores favour expert.1, only the honest expert.0 comes back
        best = dmoe.MoEBeamSearcher(dht, "expert.", (2,)).find_best_experts([np.array([0.0, 5.0])], 2)
        self.assertEqual([(h.uid, port_of(h)) for h in best], [("expert.0", honest.port)])
        # a layer on it never routes to the impostor
        layer = dmoe.MixtureOfExperts(in_features=16, grid_size=(2,), dht=dht, uid_prefix="expert.", k_best=2,
                                      forward_timeout=10, backward_timeout=10, seed=5)
        f = layer.forward(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
        for s in range(4):
            self.assertEqual(f.expert_weight(s, "expert.1"), 0.0)
            self.assertAlmostEqual(f.expert_weight(s, "expert.0"), 1.0, places=5)

    def test_a_bad_keys_file_raises(self):
        missing = os.path.join(self.dir, "missing")
        with self.assertRaises(dmoe.DMoEError) as cm:
            dmoe.DHT(trusted_keys=missing)
        self.assertIn("cannot read the trusted keys file " + missing, str(cm.exception))
        with open(self.keys, "w") as f:
            f.write("# keys\nnot-a-key\n")
        with self.assertRaises(dmoe.DMoEValueError) as cm:
            dmoe.DHT(trusted_keys=self.keys)
        self.assertIn(self.keys + ":2:", str(cm.exception))
        self.assertIn("64 hex digits", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
