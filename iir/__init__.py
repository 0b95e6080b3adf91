"""IIR, the Intelligent Inference Router. Kept import-light: small stdlib scripts import from here."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iir")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
