import sys

from orl_bench.cli import main

sys.exit(main())
