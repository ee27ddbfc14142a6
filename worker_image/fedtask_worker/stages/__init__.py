"""One module per stage; each defines `add_arguments(parser)` and `run(args) -> dict` (the result)."""
STAGES = ("init", "train", "aggregate", "adjust", "publish")
