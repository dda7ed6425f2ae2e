"""qscale: Kubernetes autoscaling decisions from a deep Q-network."""

__version__ = "0.1.0"
