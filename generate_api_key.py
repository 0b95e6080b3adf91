#!/usr/bin/env python3
"""Print new IIR API keys (standard library only).

Example: ``python generate_api_key.py --length 40 --prefix myservice``
"""

import sys

from iir.cli.keygen import main

if __name__ == "__main__":
    sys.exit(main(prog="generate_api_key.py"))
