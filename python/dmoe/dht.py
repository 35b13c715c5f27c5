"""dht.py -- dmoe.DHT: a node of a dmoe DHT, with hivemind.DHT's names (store, get, shutdown,
get_visible_maddrs) and declare_experts / get_dht_time.

The node runs inside libdmoe's loop thread (no process of its own, unlike hivemind's). Keys, subkeys and
values are serialized with msgpack exactly as hivemind serializes them, so a dmoe node and this package
agree on what a key is.
"""
import ctypes
import os
from collections import namedtuple

import msgpack

from . import _lib
from ._lib import ERRBUF, check, errbuf, lib

__all__ = ["DHT", "ValueWithExpiration", "get_dht_time", "declare_experts"]

ValueWithExpiration = namedtuple("ValueWithExpiration", ["value", "expiration_time"])


def get_dht_time():
    """The DHT's clock: seconds since the epoch (hivemind.utils.get_dht_time)."""
    return lib.dmoe_dht_time()


def packb(obj):
    """The msgpack bytes of a key, subkey or value, as hivemind serializes them (str as str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True)


def _hashable_keys(pairs):
    return {(tuple(k) if isinstance(k, list) else k): v for k, v in pairs}


def unpackb(data):
    """A stored value back as Python objects (arrays as lists; an array used as a map key as a tuple)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=_hashable_keys)


class DHT:
    """A DHT node. initial_peers: multiaddrs of running nodes ("/ip4/127.0.0.1/tcp/PORT/p2p/ID", as a node
    logs them). client_mode=True: the node only asks (initial peers required). Otherwise it also serves the
    DHT on host_maddrs[0] (default /ip4/127.0.0.1/tcp/0) and may be the first node of a network.
    trusted_keys: the path of a trusted-keys file (dmoe-node --trusted_keys: one Ed25519 public key as 64 hex
    digits a line, '#' comments) for a private swarm: the node then stores, returns and uses only DHT records
    signed by those keys, and so do the experts and layers found through it. The file is read when the node
    joins; a missing or malformed one raises DMoEError with the message naming it. identity_path: the file of
    the node's Ed25519 key (dmoe-node --identity_path; created with mode 0600 when absent): the node's id, the
    /p2p/ part of its address, and the key that signs its records stay the same across restarts; a file
    group or others may read raises DMoEError naming it. Default: a new key each start."""

    def __init__(self, initial_peers=None, *, start=True, client_mode=False, host_maddrs=None, trusted_keys=None,
                 identity_path=None, **_ignored):
        if isinstance(initial_peers, str):
            initial_peers = [initial_peers]
        self.initial_peers = [str(p) for p in (initial_peers or [])]
        self.client_mode = bool(client_mode)
        self.host_maddrs = list(host_maddrs) if host_maddrs else None
        self.trusted_keys = os.fspath(trusted_keys) if trusted_keys is not None else None
        self.identity_path = os.fspath(identity_path) if identity_path is not None else None
        self._h = None
        if start:
            self.run_in_background()

    def run_in_background(self, await_ready=True, timeout=None):
        """Join the network (blocking until joined or failed, bounded by the DHT's own timeouts)."""
        if self._h is not None:
            return
        peers = (ctypes.c_char_p * max(1, len(self.initial_peers)))(*[p.encode() for p in self.initial_peers])
        h = ctypes.c_void_p()
        e = errbuf()
        listen = self.host_maddrs[0].encode() if self.host_maddrs else None
        keys = os.fsencode(self.trusted_keys) if self.trusted_keys is not None else None
        ident = os.fsencode(self.identity_path) if self.identity_path is not None else None
        rc = lib.dmoe_dht_join_identity(_lib.ctx(), peers, len(self.initial_peers), int(self.client_mode), listen,
                                        keys, ident, ctypes.byref(h), e, ERRBUF)
        check(rc, e)
        self._h = h
        _lib.track_dht(self)

    def _handle(self):
        if self._h is None:
            raise _lib.DMoEError(_lib.ESHUTDOWN, "the DHT is not running (shut down, or start=False)")
        return self._h

    def is_alive(self):
        return self._h is not None

    def get_visible_maddrs(self, latest=False):
        """The node's own multiaddrs ([] in client mode)."""
        buf = ctypes.create_string_buffer(256)
        lib.dmoe_dht_maddr(self._handle(), buf, 256)
        return [buf.value.decode()] if buf.value else []

    def store(self, key, value, expiration_time, subkey=None, return_future=False):
        """Store value under key (into key's dictionary under subkey) until expiration_time (DHT time).
        Returns True when at least one replica took it."""
        k, v = packb(key), packb(value)
        sk = packb(subkey) if subkey is not None else None
        e = errbuf()
        rc = lib.dmoe_dht_store(self._handle(), k, len(k), sk, len(sk) if sk else 0, v, len(v),
                                float(expiration_time), e, ERRBUF)
        if rc == _lib.ENOTFOUND:
            return False
        check(rc, e)
        return True

    def get(self, key, latest=False, return_future=False):
        """The value stored under key as ValueWithExpiration(value, expiration_time), or None. A dictionary
        comes back as {subkey: ValueWithExpiration}; a subkey that is a msgpack array (a signed record's
        [tag, public key], wire/PROTOCOL_DHT.md) comes back as a tuple, so that it can be a dict key."""
        k = packb(key)
        v = ctypes.c_void_p()
        e = errbuf()
        check(lib.dmoe_dht_get(self._handle(), k, len(k), int(bool(latest)), ctypes.byref(v), e, ERRBUF), e)
        try:
            kind = lib.dmoe_value_kind(v)
            if kind == 0:
                return None
            exp = lib.dmoe_value_expiration(v)
            if kind == 1:
                n = ctypes.c_size_t()
                p = lib.dmoe_value_bytes(v, ctypes.byref(n))
                return ValueWithExpiration(unpackb(ctypes.string_at(p, n.value)), exp)
            out = {}
            for i in range(lib.dmoe_value_nsubs(v)):
                sk, skl, sv, svl, se = (ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_void_p(), ctypes.c_size_t(),
                                        ctypes.c_double())
                lib.dmoe_value_sub(v, i, ctypes.byref(sk), ctypes.byref(skl), ctypes.byref(sv), ctypes.byref(svl),
                                   ctypes.byref(se))
                subkey = unpackb(ctypes.string_at(sk, skl.value))
                out[tuple(subkey) if isinstance(subkey, list) else subkey] = ValueWithExpiration(
                    unpackb(ctypes.string_at(sv, svl.value)), se.value)
            return ValueWithExpiration(out, exp)
        finally:
            lib.dmoe_value_free(v)

    def shutdown(self):
        """Stop the node; calls through it then fail. Idempotent."""
        h, self._h = self._h, None
        if h is not None and not _lib.closed():
            lib.dmoe_dht_free(h)

    def __del__(self):
        try:
            self.shutdown()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def declare_experts(dht, uids, expiration_time, endpoint=None):
    """Declare uids as served at endpoint (a node's multiaddr with /p2p/ID; default: this DHT node's own
    address, as hivemind's declare_experts does) until expiration_time, with the records hivemind's servers
    write. Returns one boolean per uid."""
    uids = list(uids)
    if endpoint is None:
        own = dht.get_visible_maddrs()
        if not own:
            raise _lib.DMoEValueError(_lib.EINVAL, "a client-mode DHT node has no address: give endpoint=")
        endpoint = own[0]
    arr = (ctypes.c_char_p * max(1, len(uids)))(*[u.encode() for u in uids])
    e = errbuf()
    rc = lib.dmoe_dht_declare_experts(dht._handle(), arr, len(uids), str(endpoint).encode(), float(expiration_time),
                                      e, ERRBUF)
    if rc == _lib.ENOTFOUND:
        return [False] * len(uids)
    check(rc, e)
    return [True] * len(uids)
