"""``python3 scripts/gpu_check [OUT] [options]``: see the package docstring."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, where the package lives

from gpu_check import main  # noqa: E402

sys.exit(main())
