"""astro_reduce-airflow: the T120 reduction library (never imports Airflow)."""

import os

__version__ = "0.1.0"

# The reduction runs its own threads (--jobs); OpenBLAS's threads only spin beside them
# (measured: 0.15 s more CPU and 0.03 s more wall on a 61-frame night) for the few tiny
# matrix products we do. Set before numpy is first imported; the caller's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
