"""Peak memory of one benchmarked call: ``omkit.bench.memory`` (one implementation for the
pytest-benchmark suites and ``omkit bench``)."""
from omkit.bench.memory import PeakMemory, current_rss_bytes  # noqa: F401
