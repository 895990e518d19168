"""``python -m fewseg ...`` is ``fewseg ...`` (e.g. ``python -m fewseg config --write README.md``)."""
import sys

from fewseg.cli import main

sys.exit(main())
