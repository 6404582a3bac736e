"""A shell: the parties assembled on one machine (Flower's simulation engine), the synthetic clinics
the demo and tests use, and the per-site report of a run."""
