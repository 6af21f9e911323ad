"""Configuration: the schema (``schema``), durations, and the loader that checks every rule."""
