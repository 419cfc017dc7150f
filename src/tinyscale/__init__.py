"""tinyscale: a laboratory for the science of small language models."""

__version__ = "0.1.0"
