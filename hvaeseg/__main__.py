import sys

from hvaeseg.cli import main

sys.exit(main())
