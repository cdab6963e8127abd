"""jaxnotes' shared library: models, input pipeline, the training engine, checkpoints, plots."""
