"""The steps of a night's reduction, one module each; the night plan (ar_tasks.nightplan)
composes them, and the CLI and the DAG run that plan.

- setup: inventory, working copies, stale products, --clear
- masters: master darks, interpolated darks, master flats
- calibrate: a group's aux frames
- stack: a group's registration and combination
- solve: a group's astrometry
- previews: PNG quick-looks
- publish: QC records and the night's manifest

Each step is a thin layer over the pure functions of ar_tasks (masters, calibration,
registration, combine, astrometry): it chooses files, builds headers and provenance keys, and
returns a small JSON-able record; problems are logged through `logging` and recorded.
"""

from .common import StepError
from .setup import clear_night, load_inventory, remove_temporaries, setup_night

__all__ = ["StepError", "clear_night", "load_inventory", "remove_temporaries", "setup_night"]
