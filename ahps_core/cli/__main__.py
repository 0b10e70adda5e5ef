import sys

from ahps_core.cli import main

sys.exit(main())
