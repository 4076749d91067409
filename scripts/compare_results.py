#!/usr/bin/env python3
"""Compare two load-test results; exit 1 on a regression (the seed's command).

    python scripts/compare_results.py results/baseline_stats.csv results/current_stats.csv

Each argument is a Locust ``*_stats.csv`` or a result folder of ``agentcore
loadtest run``; the same as ``agentcore loadtest compare`` (``--help`` lists
the thresholds). docs/load-testing.md explains the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from agentcore.loadtest.compare import main
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from agentcore.loadtest.compare import main

if __name__ == "__main__":
    sys.exit(main())
