"""``python -m llava_compare.train recipe=NAME key=value ...``"""

import sys

from .quiet import quiet_startup_on_other_ranks

quiet_startup_on_other_ranks()  # before .main imports transformers, peft and DeepSpeed

from .main import main  # noqa: E402

sys.exit(main())
