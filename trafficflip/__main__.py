import sys

from trafficflip.cli import main

sys.exit(main())
