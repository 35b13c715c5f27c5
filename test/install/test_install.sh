#!/usr/bin/env bash
# test_install.sh -- `make install DESTDIR=...` then an outside C program, compiled against the installed
# <dmoe.h> with the installed dmoe.pc, joins a node's DHT and calls an expert; the header also compiles as
# C++; the installed Python package loads the installed library; `make uninstall` removes everything.
# Run from the repository root by `make test` (PYTHON, DMOE_BUILD set there). Every wait is bounded; the
# node it starts is stopped on every exit path.
set -euo pipefail
PYTHON=${PYTHON:-/usr/bin/python3}
CC=${CC:-cc}
tmp=$(mktemp -d /tmp/dmoe-install.XXXXXX)
node_pid=
cleanup() {
    if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "install test: FAILED: $*" >&2; exit 1; }

make -s install DESTDIR="$tmp/root" PREFIX=/usr/local >/dev/null
p=$tmp/root/usr/local
pydir=$(cd "$p" && ls -d lib/python3*/dist-packages 2>/dev/null | head -1)
[ -n "$pydir" ] || fail "make install did not install the python package"
for f in bin/dmoe-node bin/dmoe-call lib/libdmoe.so.1 lib/libdmoe.so include/dmoe.h lib/pkgconfig/dmoe.pc \
         "$pydir/dmoe/__init__.py" "$pydir/dmoe/_libpath.txt" share/dmoe/dmoe-node.conf share/dmoe/dmoe-node.service; do
    [ -e "$p/$f" ] || fail "make install did not install $f"
done
"$PYTHON" -c "import sys; sys.exit('/usr/local/$pydir' not in sys.path)" \
    || fail "$PYTHON does not look in /usr/local/$pydir"

# the example unit runs the installed program with a config file; the example config is one dmoe-node reads
grep -q '^ExecStart=/usr/local/bin/dmoe-node --config /etc/dmoe/node.conf$' "$p/share/dmoe/dmoe-node.service" \
    || fail "the installed unit does not run /usr/local/bin/dmoe-node --config /etc/dmoe/node.conf"
"$p/bin/dmoe-node" --config "$p/share/dmoe/dmoe-node.conf" --help >/dev/null \
    || fail "the installed example config does not parse"

# the library exports the public API and nothing else
others=$(nm -D --defined-only "$p/lib/libdmoe.so.1" | awk '$2 ~ /[TDBR]/ && $3 !~ /^dmoe_/ {print $3}' | grep -v '^_' || true)
[ -z "$others" ] || fail "libdmoe.so exports non-API symbols: $others"

cat > "$tmp/call_expert.c" <<'C'
/* An outside program: join the DHT through the node given as argv[1], find expert.0, call it. */
#include <dmoe.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    char err[512];
    dmoe_ctx *ctx;
    dmoe_dht *d;
    dmoe_expert *e = NULL;
    if (argc < 2 || dmoe_ctx_new(&ctx, err, sizeof err) != 0) return 2;
    const char *peers[1] = { argv[1] };
    if (dmoe_dht_join(ctx, peers, 1, 1, NULL, &d, err, sizeof err) != 0) { fprintf(stderr, "join: %s\n", err); return 1; }
    const char *uids[1] = { "expert.0" };
    for (int i = 0; i < 100 && !e; i++)
        if (dmoe_get_experts(d, uids, 1, &e, err, sizeof err) != 0) { fprintf(stderr, "find: %s\n", err); return 1; }
    if (!e) { fprintf(stderr, "expert.0 not found\n"); return 1; }
    float x[2 * 8];
    for (int i = 0; i < 16; i++) x[i] = (float)i / 16.0f;
    dmoe_tensor in = { DMOE_FLOAT32, 2, { 2, 8 }, x };
    dmoe_tensors *out = NULL;
    int rc = dmoe_expert_forward(e, &in, 1, 10, &out, err, sizeof err);
    if (rc != 0) { fprintf(stderr, "forward: %s (%s)\n", err, dmoe_strerror(rc)); return 1; }
    dmoe_tensor y;
    dmoe_tensors_get(out, 0, &y);
    printf("output %lldx%lld\n", (long long)y.shape[0], (long long)y.shape[1]);
    dmoe_tensors_free(out);
    dmoe_expert_free(e);
    dmoe_dht_free(d);
    dmoe_ctx_free(ctx);
    return 0;
}
C
pc() { PKG_CONFIG_PATH=$p/lib/pkgconfig pkg-config --define-variable=prefix="$p" "$@" dmoe; }
$CC -std=c11 -Wall -Wextra -Werror $(pc --cflags) "$tmp/call_expert.c" -o "$tmp/call_expert" $(pc --libs) \
    || fail "cannot compile against the installed header"
if command -v c++ >/dev/null; then
    c++ -x c++ -Wall -Werror -fsyntax-only $(pc --cflags) "$tmp/call_expert.c" || fail "<dmoe.h> is not valid C++"
fi

"$p/bin/dmoe-node" --expert_cls ffn --hidden_dim 8 --num_experts 1 --update_period 0.5 \
    --host_maddrs /ip4/127.0.0.1/tcp/0 >"$tmp/node.log" 2>&1 &
node_pid=$!
maddr=
for _ in $(seq 200); do
    maddr=$(sed -n "s/.*Running DHT node on \['\(\/ip4\/[^']*\)'\].*/\1/p" "$tmp/node.log")
    [ -n "$maddr" ] && break
    sleep 0.1
done
[ -n "$maddr" ] || fail "the installed dmoe-node did not start: $(cat "$tmp/node.log")"
out=$(LD_LIBRARY_PATH=$p/lib timeout 60 "$tmp/call_expert" "$maddr") || fail "the C program failed: $out"
[ "$out" = "output 2x8" ] || fail "unexpected output: $out"

# the installed Python package finds the installed library (not the build tree's)
lib=$(env -u DMOE_LIB PYTHONPATH=$p/$pydir "$PYTHON" -c \
      'import dmoe, dmoe._lib as L; print(L.lib._name)') || fail "the installed package does not import"
[ "$lib" = "$p/lib/libdmoe.so.1" ] || fail "the installed package loaded $lib"

kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=
make -s uninstall DESTDIR="$tmp/root" PREFIX=/usr/local >/dev/null
left=$(find "$p" -type f || true)
[ -z "$left" ] || fail "make uninstall left: $left"
echo "install test: ok (make install/uninstall, pkg-config, an outside C program called an expert, python package)"
