"""``python -m clipneg.commands ...`` (and ``accelerate launch -m clipneg.commands generate ...``): the clipneg
command, for launchers that start a module rather than a console script."""

import sys

from clipneg.commands import main

sys.exit(main())
