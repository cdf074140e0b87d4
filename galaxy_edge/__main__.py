import sys

from galaxy_edge.cli import main

sys.exit(main())
