"""Where a request runs: the built-in echo model, the local engine (``local/``) and remote
providers (``providers/``), each behind the small interface in :mod:`iir.backends.base`."""
