"""``python -m resnet.report``: build ``reports/degradation.html`` (``resnet.report.build``)."""

import sys

from resnet.report.build import main

sys.exit(main())
