import sys

from iir.cli import main

sys.exit(main())
