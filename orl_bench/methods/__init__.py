"""In-tree pretraining methods; importing this package registers them."""
from orl_bench.methods import byol  # noqa: F401
from orl_bench.methods.orl import method  # noqa: F401
from orl_bench.methods import supervised  # noqa: F401
from orl_bench.methods import byol_multicrop  # noqa: F401
from orl_bench.methods import simclr, mocov2  # noqa: F401
from orl_bench.methods import densecl  # noqa: F401
from orl_bench.methods import scrl, univip  # noqa: F401
from orl_bench.methods import selfemd  # noqa: F401
