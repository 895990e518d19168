"""``python -m fewseg ...`` is ``fewseg ...`` (e.g. ``python -m fewseg config --write README.md``).

Under ``torchrun -m fewseg`` (WORLD_SIZE > 1) a finished rank leaves with ``os._exit`` once its output is flushed:
the work, its files and the process group are already closed, and skipping the C++ static destructors avoids an
abort at interpreter exit ("terminate called without an active exception") seen on loaded machines."""
import os
import sys

from fewseg.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
