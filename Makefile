# dmoe -- build, test and demo.
#
#   make          install missing Debian packages (once), build build/dmoe-node, build/dmoe-call
#   make test     the same, then the whole suite (unit + integration, one Criterion binary)
#   make demo     the same, then scripts/demo.sh on loopback
#   make test SAN=1   everything under ASan+UBSan, in build-san/
#   make install PREFIX=/usr/local [DESTDIR=...]   programs, libdmoe.so, <dmoe.h>, dmoe.pc, the Python package,
#                 and in share/dmoe/ an example node config and systemd unit
#   make uninstall    removes what make install put there
#   make fuzz [FUZZ_S=10]   libFuzzer harnesses of test/fuzz/, in build-fuzz/, FUZZ_S seconds each (README "Fuzzing")
#   make bench-dht   the DHT at scale by simulation (dmoe-dhtsim sweeps; README "The DHT at scale")
#
# Sources are discovered: every .c below runtime/ wire/ kernels/ actors/ goes into one static library;
# every cmd/dmoe-<name>.c is a program, linked with the .c files of cmd/<name>/ when that folder exists
# (the command-line code only that program uses); every .c below test/ but test/fuzz/ and test/tools/ is
# linked into build/test/dmoe-tests (test/fuzz/ holds the fuzz harnesses, each a program of its own;
# test/tools/ the test-only programs, e.g. build/test/wan-link, the link emulator).

PKGS      := libevent libevent_pthreads msgpack openblas libxxhash libsodium
TEST_PKGS := criterion
# Debian packages that provide the pkg-config names above (checked by `make deps`).
DEB_PKGS  := pkg-config libevent-dev libmsgpack-dev libopenblas-dev libxxhash-dev libsodium-dev libcriterion-dev \
             python3-numpy python3-torch python3-msgpack
# The Python package and its tests run on Debian's interpreter (python3-numpy, python3-torch, python3-msgpack).
PYTHON    := /usr/bin/python3

CC       ?= cc
SAN      ?= 0
FUZZ     ?= 0
ifeq ($(FUZZ),1)
# The fuzz build (make fuzz runs make FUZZ=1 CC=clang): every object carries libFuzzer's coverage
# instrumentation and ASan+UBSan; the harnesses link libFuzzer itself (FUZZ_LINK).
BUILD    := build-fuzz
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1 -g -fno-math-errno
else ifeq ($(SAN),1)
BUILD    := build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1 -g -fno-math-errno
else
BUILD    := build
SANFLAGS :=
OPT      := -O3 -g -fno-math-errno
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
TEST_LIBS  = $(shell pkg-config --libs $(TEST_PKGS) 2>/dev/null)

# -Wno-format-truncation: messages are cut to their buffers on purpose (snprintf); gcc's guesses at -O3
# about what might not fit are not bugs. -Wno-missing-field-initializers: designated initializers that
# leave the rest zero are the idiom of the flag tables.
NO_TRUNC := $(shell $(CC) -Werror -Wno-format-truncation -E -x c /dev/null >/dev/null 2>&1 && echo -Wno-format-truncation)
# -fPIC (the objects also make libdmoe.so) would stop gcc from inlining global functions within a file,
# since a shared library's symbols may be interposed; libdmoe's are not (only the API is exported).
NO_INTERPOSE := $(shell $(CC) -Werror -fno-semantic-interposition -E -x c /dev/null >/dev/null 2>&1 && echo -fno-semantic-interposition)
CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wno-missing-field-initializers \
           $(NO_TRUNC) \
           -fPIC $(NO_INTERPOSE) -I. $(SANFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := $(SANFLAGS) $(EXTRA_LDFLAGS)
LIBS     = $(PKG_LIBS) -lpthread -lm

LIB_SRCS  := $(shell find runtime wire kernels actors -name '*.c' | sort)
CMD_SRCS  := $(wildcard cmd/*.c)
CMD_EXTRA := $(shell find cmd -mindepth 2 -name '*.c' | sort)
TEST_SRCS := $(shell find test \( -path test/fuzz -o -path test/tools \) -prune -o -name '*.c' -print | sort)
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o)
PROGS     := $(CMD_SRCS:cmd/%.c=$(BUILD)/%)
TEST_BIN  := $(BUILD)/test/dmoe-tests
# Test-only programs (test/tools/<name>.c, with what of test/ they name below): not installed.
TEST_TOOLS := $(BUILD)/test/wan-link
DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: all deps test demo bench bench-dht valgrind depcheck clean install uninstall fuzz fuzz-deps fuzz-build fuzz-seeds
# -fPIC: the same objects make the programs, build/libdmoe.a and build/libdmoe.so.
all: $(PROGS) $(BUILD)/libdmoe.so

# deps: install the Debian packages when any pkg-config check fails. Runs once per build folder, and again
# when the Makefile changes (a package may have been added to the lists above).
deps: $(DEPS_STAMP)
$(DEPS_STAMP): Makefile
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists $(PKGS) $(TEST_PKGS) \
	    || ! $(PYTHON) -c 'import numpy, torch, msgpack' >/dev/null 2>&1; then \
	  echo "deps: installing $(DEB_PKGS)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(DEB_PKGS) \
	    || { echo "deps: apt-get failed; install $(DEB_PKGS) by hand" >&2; exit 1; }; \
	fi
	@pkg-config --exists $(PKGS) $(TEST_PKGS) || { echo "deps: pkg-config still misses one of $(PKGS) $(TEST_PKGS)" >&2; exit 1; }
	@$(PYTHON) -c 'import numpy, torch, msgpack' || { echo "deps: $(PYTHON) cannot import numpy, torch and msgpack" >&2; exit 1; }
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/obj/%.o: %.c $(DEPS_STAMP) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libdmoe.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

# libdmoe.so: the whole library, exporting only the functions of the public header actors/api/dmoe.h
# (the version script is generated from the header: one list of names, the header's).
SONAME := libdmoe.so.1
$(BUILD)/dmoe.map: actors/api/dmoe.h
	@mkdir -p $(dir $@)
	{ echo '{ global:'; grep -oE '\bdmoe_[a-z0-9_]+\(' $< | tr -d '(' | sort -u | sed 's/$$/;/'; echo 'local: *; };'; } > $@

$(BUILD)/libdmoe.so: $(LIB_OBJS) $(BUILD)/dmoe.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=$(BUILD)/dmoe.map -Wl,--no-undefined $(LDFLAGS) \
	  $(LIB_OBJS) -o $@ $(LIBS)

# dmoe-<name> links cmd/dmoe-<name>.c, the files of cmd/<name>/ (if any) and the library.
.SECONDEXPANSION:
$(BUILD)/dmoe-%: $(BUILD)/obj/cmd/dmoe-%.o $$(addprefix $(BUILD)/obj/,$$(addsuffix .o,$$(basename $$(wildcard cmd/$$*/*.c)))) $(BUILD)/libdmoe.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

$(TEST_BIN): $(TEST_OBJS) $(BUILD)/libdmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS) $(TEST_LIBS)

$(BUILD)/test/wan-link: $(BUILD)/obj/test/tools/wan-link.o $(BUILD)/obj/test/integration/wan/wan_link.o $(BUILD)/libdmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

# The suite finds the programs and data through these variables (see test/integration/harness.h).
TEST_ENV := DMOE_BUILD=$(abspath $(BUILD)) DMOE_TEST_DATA=$(abspath test/data)
ifeq ($(SAN),1)
TEST_ENV += ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
            LSAN_OPTIONS=suppressions=$(abspath test/lsan.supp)
endif
CRITERION_FLAGS ?= --jobs 2

# After the Criterion suite: the Python package's suite (test/python, over build/libdmoe.so) and the
# installed-header test (test/install). Both are skipped under SAN=1: python3 cannot load an ASan build.
test: $(PROGS) $(TEST_BIN) $(TEST_TOOLS) $(BUILD)/libdmoe.so
	$(TEST_ENV) $(TEST_BIN) $(CRITERION_FLAGS)
ifeq ($(SAN),1)
	@echo "test: python and install suites skipped under SAN=1 (the C API is covered by the Criterion suite)"
else
	$(TEST_ENV) DMOE_LIB=$(abspath $(BUILD)/libdmoe.so) PYTHONPATH=$(abspath python) $(PYTHON) test/python/run.py
	$(TEST_ENV) PYTHON=$(PYTHON) bash test/install/test_install.sh
endif

demo: $(PROGS)
	DMOE_BUILD=$(abspath $(BUILD)) bash scripts/demo.sh

valgrind: $(PROGS)
	DMOE_BUILD=$(abspath $(BUILD)) bash scripts/valgrind.sh

bench: $(PROGS)
	DMOE_BUILD=$(abspath $(BUILD)) bash scripts/bench.sh

# bench-dht: the DHT at scale by simulation (scripts/bench_dht.sh; README "The DHT at scale"): sweeps of
# dmoe-dhtsim over peers, hostile share and churn, figures in build/bench-dht/ (results.json, dht.png).
bench-dht: $(BUILD)/dmoe-dhtsim
	DMOE_BUILD=$(abspath $(BUILD)) bash scripts/bench_dht.sh

# depcheck: no dependency cycle among our files (#include or symbol use), and the layers hold.
depcheck: $(PROGS)
	$(PYTHON) scripts/depcheck.py $(BUILD)

# install: programs to bin/, the library to lib/ (libdmoe.so.1 and the libdmoe.so link), <dmoe.h> to
# include/, dmoe.pc to lib/pkgconfig/, the Python package where Debian's python3 looks (/usr/lib/python3/
# dist-packages for PREFIX /usr, else PREFIX/lib/python3.X/dist-packages), told where the library is; the
# example config and systemd unit to share/dmoe/ (the unit's ExecStart pointed at PREFIX/bin).
PREFIX  ?= /usr/local
LIBDIR  := $(PREFIX)/lib
PYVER    = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYDIR    = $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(PREFIX)/lib/python$(PYVER)/dist-packages)
PY_SRCS := $(wildcard python/dmoe/*.py)
SHAREDIR := $(PREFIX)/share/dmoe
install: $(PROGS) $(BUILD)/libdmoe.so
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PYDIR)/dmoe \
	  $(DESTDIR)$(SHAREDIR)
	install -m 755 $(PROGS) $(DESTDIR)$(PREFIX)/bin/
	install -m 755 $(BUILD)/libdmoe.so $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libdmoe.so
	install -m 644 actors/api/dmoe.h $(DESTDIR)$(PREFIX)/include/dmoe.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBS@|$(PKG_LIBS) -lpthread -lm|' scripts/dmoe.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/dmoe.pc
	install -m 644 $(PY_SRCS) $(DESTDIR)$(PYDIR)/dmoe/
	echo '$(LIBDIR)/$(SONAME)' > $(DESTDIR)$(PYDIR)/dmoe/_libpath.txt
	install -m 644 scripts/dmoe-node.conf $(DESTDIR)$(SHAREDIR)/dmoe-node.conf
	sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|' -e 's|/usr/local/share/dmoe/|$(SHAREDIR)/|g' scripts/dmoe-node.service \
	  > $(DESTDIR)$(SHAREDIR)/dmoe-node.service
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(notdir $(PROGS)))
	rm -f $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libdmoe.so $(DESTDIR)$(PREFIX)/include/dmoe.h
	rm -f $(DESTDIR)$(LIBDIR)/pkgconfig/dmoe.pc
	rm -rf $(DESTDIR)$(PYDIR)/dmoe $(DESTDIR)$(SHAREDIR)
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

# ---- fuzzing (test/fuzz/; README "Fuzzing") ----
# make fuzz installs clang and its libFuzzer runtime when missing (fuzz-deps), builds the library and one
# program per test/fuzz/fuzz_<name>.c in build-fuzz/ (make FUZZ=1 CC=clang), then scripts/fuzz.sh runs
# each for FUZZ_S seconds from the seeds of test/fuzz/corpus/<name>/. Findings land in
# build-fuzz/findings/<name>/ and fail the target. make fuzz-seeds rewrites the committed seeds from
# test/fuzz/mkseeds.c (valid requests built by the library's own encoders).
FUZZ_CC     ?= clang
FUZZ_S      ?= 10
FUZZ_NAMES  := $(filter-out common,$(patsubst test/fuzz/fuzz_%.c,%,$(wildcard test/fuzz/fuzz_*.c)))
FUZZ_STAMP  := build-fuzz/.fuzz-deps-ok
FUZZ_LINK   := -fsanitize=fuzzer,address,undefined
FUZZ_COMMON := $(BUILD)/obj/test/fuzz/fuzz_common.o

fuzz: fuzz-build
	bash scripts/fuzz.sh build-fuzz $(FUZZ_S) $(FUZZ_NAMES)

fuzz-build: $(FUZZ_STAMP)
	$(MAKE) FUZZ=1 CC=$(FUZZ_CC) $(FUZZ_NAMES:%=build-fuzz/fuzz/%) build-fuzz/fuzz/mkseeds

fuzz-seeds: fuzz-build
	build-fuzz/fuzz/mkseeds test/fuzz/corpus

# fuzz-deps: Debian 12's clang (14) and the package with its libFuzzer runtime (libclang-rt-14-dev,
# named after clang's major version), installed when a trivial harness does not link.
fuzz-deps: $(FUZZ_STAMP)
$(FUZZ_STAMP): Makefile
	@mkdir -p build-fuzz
	@printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' > build-fuzz/probe.c
	@if ! $(FUZZ_CC) -fsanitize=fuzzer,address,undefined build-fuzz/probe.c -o build-fuzz/probe >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  command -v $(FUZZ_CC) >/dev/null 2>&1 || { echo "fuzz-deps: installing clang"; \
	    $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q clang; } \
	    || { echo "fuzz-deps: apt-get failed; install clang by hand" >&2; exit 1; }; \
	  RT=libclang-rt-$$($(FUZZ_CC) -dumpversion | cut -d. -f1)-dev; echo "fuzz-deps: installing $$RT"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$RT \
	    || { echo "fuzz-deps: apt-get failed; install $$RT by hand" >&2; exit 1; }; \
	fi
	@$(FUZZ_CC) -fsanitize=fuzzer,address,undefined build-fuzz/probe.c -o build-fuzz/probe \
	  || { echo "fuzz-deps: $(FUZZ_CC) cannot link a libFuzzer harness" >&2; exit 1; }
	@rm -f build-fuzz/probe build-fuzz/probe.c && touch $@

# A harness: its file, the shared helpers of test/fuzz/fuzz_common.c and the library, with libFuzzer's main.
$(BUILD)/fuzz/%: $(BUILD)/obj/test/fuzz/fuzz_%.o $(FUZZ_COMMON) $(BUILD)/libdmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(FUZZ_LINK) $^ -o $@ $(LIBS)

# mkseeds: a plain program (its own main) over the same objects; at link time fuzzer-no-link adds no
# libFuzzer, and the sanitizer runtime's default coverage hooks serve the instrumented objects.
$(BUILD)/fuzz/mkseeds: $(BUILD)/obj/test/fuzz/mkseeds.o $(BUILD)/libdmoe.a
	@mkdir -p $(dir $@)
	$(CC) -fsanitize=fuzzer-no-link,address,undefined $^ -o $@ $(LIBS)

clean:
	rm -rf build build-san build-fuzz

# The objects the pattern rules alone would reach (the programs', the fuzz harnesses') are named here, so
# that make treats them as ordinary targets: never deleted as intermediates, and always built when
# missing. (A bare `.SECONDARY:` did the first for every target, and so let make skip a missing object
# whose source was older than the program: a new test or command file was silently left out.)
PROG_OBJS := $(CMD_SRCS:%.c=$(BUILD)/obj/%.o) $(CMD_EXTRA:%.c=$(BUILD)/obj/%.o) \
             $(FUZZ_NAMES:%=$(BUILD)/obj/test/fuzz/fuzz_%.o) $(BUILD)/obj/test/fuzz/mkseeds.o
$(PROG_OBJS): $(DEPS_STAMP)

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(wildcard $(BUILD)/obj/test/fuzz/*.d) $(CMD_SRCS:%.c=$(BUILD)/obj/%.d) $(CMD_EXTRA:%.c=$(BUILD)/obj/%.d)
