"""T120 configuration files for source-extractor, psfex, scamp and astrometry.net.

Installed as the package data `ar_tasks.astromatic_configs`; see ar_tasks/astro_config.py.
"""
