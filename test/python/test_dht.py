"""test_dht.py -- dmoe.DHT: joining in client and full mode, store and get (plain values and dictionaries,
msgpack-compatible with hivemind), declare_experts, errors that name what went wrong, a stable identity
(identity_path)."""
import os
import shutil
import stat
import tempfile
import unittest

import dmoe
from dmoe.dht import unpackb
from nodes import Node


class TestDHT(unittest.TestCase):
    def setUp(self):
        self.node = Node("--expert_cls", "nop", "--hidden_dim", "4", "--num_experts", "1", "--update_period", "0.5")
        self.addCleanup(self.node.stop)

    def test_store_get_between_client_and_full_nodes(self):
        full = dmoe.DHT(initial_peers=[self.node.maddr], start=True)
        self.addCleanup(full.shutdown)
        client = dmoe.DHT(initial_peers=full.get_visible_maddrs(), client_mode=True, start=True)
        self.addCleanup(client.shutdown)
        self.assertEqual(client.get_visible_maddrs(), [])
        self.assertIn("/p2p/", full.get_visible_maddrs()[0])
        now = dmoe.get_dht_time()
        self.assertTrue(client.store("key", {"a": [1, 2.5, None, "x"]}, now + 30))
        got = full.get("key", latest=True)
        self.assertEqual(got.value, {"a": [1, 2.5, None, "x"]})
        self.assertAlmostEqual(got.expiration_time, now + 30, places=3)
        self.assertTrue(full.store("dict", b"one", now + 30, subkey="s1"))
        self.assertTrue(client.store("dict", 2, now + 40, subkey=7))
        got = self.node_side_get(client, "dict")
        self.assertEqual({k: v.value for k, v in got.value.items()}, {"s1": b"one", 7: 2})
        self.assertIsNone(client.get("never-stored"))

    def node_side_get(self, dht, key):
        return dht.get(key, latest=True)

    def test_first_node_and_declared_experts(self):
        first = dmoe.DHT(start=True)   # no initial peers: the first node of its own network
        self.addCleanup(first.shutdown)
        self.assertTrue(all(dmoe.declare_experts(first, ["ffn.1.2", "ffn.3.4"], dmoe.get_dht_time() + 30)))
        found = dmoe.get_expert_handles(first, ["ffn.1.2", "ffn.3.4", "ffn.9.9"])
        self.assertEqual([h.uid if h else None for h in found], ["ffn.1.2", "ffn.3.4", None])
        self.assertEqual(found[0].endpoint, first.get_visible_maddrs()[0])
        # hivemind's records, signed (wire/PROTOCOL_DHT.md): prefix -> {(coordinate, public key): record of
        # [uid, host]}, uid -> {(None, public key): record of [node id, host]}
        prefix = first.get("ffn.1.", latest=True).value
        self.assertEqual(len(prefix), 1)
        (coord, pk), = prefix
        self.assertEqual(coord, 2)
        self.assertEqual(len(pk), 32)
        magic, signer, sig, payload = prefix[(coord, pk)].value
        self.assertEqual((magic, signer, len(sig)), ("dmoe/rec1", pk, 64))
        self.assertEqual(unpackb(payload), ["ffn.1.2", first.get_visible_maddrs()[0]])
        uid = first.get("ffn.3.4").value
        self.assertEqual(list(uid), [(None, pk)])
        self.assertEqual(unpackb(uid[(None, pk)].value[3])[1], first.get_visible_maddrs()[0])

    def test_errors(self):
        with self.assertRaises(dmoe.DMoEError) as cm:
            dmoe.DHT(client_mode=True, start=True)
        self.assertIn("initial peers", str(cm.exception))
        dead = Node("--expert_cls", "nop", "--hidden_dim", "4", "--num_experts", "1")
        addr = dead.maddr
        dead.stop()
        with self.assertRaises(dmoe.DMoEError) as cm:
            dmoe.DHT(initial_peers=[addr], client_mode=True, start=True)
        self.assertIn(addr.split("/p2p/")[0].split("/")[2], str(cm.exception))
        d = dmoe.DHT(initial_peers=[self.node.maddr], client_mode=True, start=True)
        d.shutdown()
        with self.assertRaises(dmoe.DMoEError):
            d.get("key")


class TestIdentity(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dmoe-pyident-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    @staticmethod
    def node_id(dht):
        return dht.get_visible_maddrs()[0].split("/p2p/")[1]

    def test_identity_path_keeps_the_node_id(self):
        path = os.path.join(self.dir, "node.key")
        first = dmoe.DHT(identity_path=path)
        first_id = self.node_id(first)
        first.shutdown()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, "a missing key file is created 0600")
        again = dmoe.DHT(identity_path=path)
        self.addCleanup(again.shutdown)
        self.assertEqual(self.node_id(again), first_id)
        other = dmoe.DHT()
        self.addCleanup(other.shutdown)
        self.assertNotEqual(self.node_id(other), first_id)
        client = dmoe.DHT(initial_peers=again.get_visible_maddrs(), client_mode=True,
                          identity_path=os.path.join(self.dir, "client.key"))
        self.addCleanup(client.shutdown)
        self.assertTrue(client.store("k", 1, dmoe.get_dht_time() + 30))
        os.chmod(path, 0o644)
        with self.assertRaises(dmoe.DMoEError) as cm:
            dmoe.DHT(identity_path=path)
        self.assertIn(path, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
