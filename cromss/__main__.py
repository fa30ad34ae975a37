import sys

from cromss.cli import main

sys.exit(main())
