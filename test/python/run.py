"""run.py -- the Python suite of `make test`: every test/python/test_*.py through stdlib unittest, ending
with one line "N passed, N failed" (exit status 1 when something failed). pytest is not needed.

    DMOE_LIB=build/libdmoe.so PYTHONPATH=python /usr/bin/python3 test/python/run.py [-k PATTERN]
"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    sys.path.insert(0, HERE)
    loader = unittest.TestLoader()
    if "-k" in sys.argv:
        loader.testNamePatterns = ["*%s*" % sys.argv[sys.argv.index("-k") + 1]]
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout)
    res = runner.run(suite)
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    passed = res.testsRun - failed - len(res.skipped)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
