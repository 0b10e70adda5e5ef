import sys

from ahps.cli import main

sys.exit(main())
