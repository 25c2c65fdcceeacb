"""classlab: train CIFAR-10-sized image classifiers from a YAML file and look inside them."""

__version__ = "0.1.0"
