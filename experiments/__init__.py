"""One module per experiment, each with `train_and_evaluate(config, workdir) -> dict`.

Run any of them with `python -m experiments --config=configs/NAME.py --workdir=DIR`.
"""
