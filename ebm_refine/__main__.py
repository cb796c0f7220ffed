"""``python -m ebm_refine <command> [options]``: the ``ebm-refine`` command (:mod:`ebm_refine.cli`)."""
import sys

from ebm_refine.cli import main

if __name__ == "__main__":
    sys.exit(main())
