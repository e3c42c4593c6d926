import sys

from gob_metrics.cli import main

sys.exit(main())
