import sys

from microal.cli.main import main

sys.exit(main())
