"""``python -m saebench_vision`` is ``saebench``."""

import sys

from saebench_vision.cli import main

sys.exit(main())
