"""``python -m resnet.study``: the study's command line, kept at its old address (``resnet.studies.cli``)."""

import sys

from resnet.studies.cli import main

if __name__ == "__main__":
    sys.exit(main())
