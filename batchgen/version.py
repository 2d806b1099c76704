"""The version, in a module of its own: what records it (a rerun's fingerprint, the log)
imports it without the package's entry points."""

__version__ = "0.1.0"
