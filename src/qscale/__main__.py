import sys

from qscale.cli import main

sys.exit(main())
