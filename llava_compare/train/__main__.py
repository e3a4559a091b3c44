"""``python -m llava_compare.train recipe=NAME key=value ...``"""

import sys

from .main import main

sys.exit(main())
