"""In-tree benchmark tasks; importing this package registers them."""
from orl_bench.tasks import (coco_maskrcnn, knn, linear_probe, semi_supervised, voc07_lowshot,  # noqa: F401
                             voc07_svm)
