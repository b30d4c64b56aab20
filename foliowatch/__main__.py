import sys

from foliowatch.cli import main

sys.exit(main())
