"""The T120 night browser (see t120_nights, the plugin that mounts it)."""
