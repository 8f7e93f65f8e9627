import sys

from realface.cli import main

sys.exit(main())
