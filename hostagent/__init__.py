"""hostagent: the host side of block-volume attachment for a remote engine."""

__version__ = "0.1.0"
