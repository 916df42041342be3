"""orl-bench: self-supervised pretraining on scene images (ORL and its baselines) and the
transfer benchmarks of the ORL paper."""
__version__ = "0.1.0"
