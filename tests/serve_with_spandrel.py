"""`python tests/serve_with_spandrel.py [app.py flags]`: Easel's app.py with spandrel imported first the way
the tests import it (tests/spandrel_here.py), for browser tests of model upscalers on machines without a
torchvision built for their torch."""
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from spandrel_here import import_spandrel  # noqa: E402

import_spandrel()
sys.argv[0] = str(HERE.parent / "app.py")
runpy.run_path(sys.argv[0], run_name="__main__")
