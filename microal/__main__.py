import sys

from microal.cli import main

sys.exit(main())
