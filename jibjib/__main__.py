import sys

from jibjib.cli import main

sys.exit(main())
