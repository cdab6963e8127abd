"""One ml-collections config per experiment: `--config=configs/NAME.py[:VARIANT]`."""
