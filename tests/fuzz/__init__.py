"""Seeded generators of hostile input for ``tests/test_fuzz.py`` (images, data files, checkpoints,
configs) and the checks every case must pass. Everything is drawn from fixed seeds, so a failing
case reproduces exactly."""
