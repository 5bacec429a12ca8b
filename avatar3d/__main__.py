"""``python -m avatar3d`` is the same as the ``avatar3d`` command."""
import sys

from avatar3d.cli import main

sys.exit(main())
