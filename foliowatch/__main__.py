# ``python -m foliowatch``: the program's entry, the same as the ``foliowatch`` script.
# Nothing imports this file, so it does not make the ground floor depend on the shell.
import sys

from foliowatch.shell.cli import main

sys.exit(main())
