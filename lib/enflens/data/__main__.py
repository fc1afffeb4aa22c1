"""``python -m enflens.data``: generate, import and inspect dataset stores."""

import sys

from enflens.data.store import main

sys.exit(main())
