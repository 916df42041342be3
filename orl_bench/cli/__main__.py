import sys

from orl_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
