"""astro_reduce-airflow: the T120 reduction library (never imports Airflow)."""

__version__ = "0.1.0"
