"""In-tree benchmark tasks; importing this package registers them."""
from orl_bench.tasks import knn, linear_probe, semi_supervised, voc07_lowshot, voc07_svm  # noqa: F401
