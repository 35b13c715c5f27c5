"""nodes.py -- starting and stopping dmoe-node processes for the Python tests.

A node is started on 127.0.0.1 port 0 with its log in a temporary file; its addresses are read from the log
("Listening on ...", "Running DHT node on [...]") as test/integration/harness.c does. Every wait is
bounded; every process started here is stopped by stop(), by the test's cleanup, or at interpreter exit.
The programs are found in $DMOE_BUILD (set by `make test`), else build/ of this tree.
"""
import atexit
import os
import re
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("DMOE_BUILD") or os.path.join(ROOT, "build")
_running = set()


class Node:
    """A running dmoe-node: .maddr (with /p2p/ID, for initial_peers), .endpoint (host:port multiaddr)."""

    def __init__(self, *args, timeout=20.0):
        self.log = tempfile.NamedTemporaryFile(prefix="dmoe-node-", suffix=".log", delete=False)
        argv = [os.path.join(BUILD, "dmoe-node"), "--host_maddrs", "/ip4/127.0.0.1/tcp/0", *[str(a) for a in args]]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _running.add(self)
        deadline = time.monotonic() + timeout
        self.maddr = None
        while time.monotonic() < deadline:
            text = self.text()
            m = re.search(r"Running DHT node on \['(/ip4/[^']+)'\]", text)
            if m:
                self.maddr = m.group(1)
                self.endpoint = self.maddr.split("/p2p/")[0]
                self.port = int(self.endpoint.rsplit("/", 1)[1])
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise RuntimeError("dmoe-node did not start (%s):\n%s" % (" ".join(argv), self.text()))

    def text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """Stop the node (sig, then SIGKILL after timeout). Returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _running.discard(self)
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return self.proc.returncode


def ffn_node(hidden_dim=16, n=4, pattern=None, extra=()):
    """A node with n ffn experts (no optimizer: the weights stay what their checkpoints say)."""
    return Node("--expert_cls", "ffn", "--hidden_dim", hidden_dim, "--num_experts", n,
                "--expert_pattern", pattern or "expert.[0:%d]" % n, "--update_period", "0.5", "--expiration", "3",
                "--num_workers", "1", "--optimizer", "none", *extra)


def wait_until(pred, timeout=20.0, step=0.1, what="condition"):
    """Poll pred() until it is true (bounded). Returns its value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(step)


@atexit.register
def _stop_all():
    for n in list(_running):
        n.stop(signal.SIGKILL, timeout=5)
