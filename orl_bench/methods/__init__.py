"""In-tree pretraining methods; importing this package registers them."""
from orl_bench.methods import byol  # noqa: F401
from orl_bench.methods.orl import method  # noqa: F401
from orl_bench.methods import supervised  # noqa: F401
