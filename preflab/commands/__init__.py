"""The commands that are not training methods, one module each with ``main(argv) -> int``:
``bon``, ``sample``, ``label``, ``reviews``, ``export``, ``demo``, ``world``, ``compare``,
``report``, ``plan``. Each parses its flags and calls the library below; ``preflab.cli`` imports
them by name when their command runs. A command never imports another command: what two share
lives a floor down.

May import: errors, config, data, metrics, models, runtime, rewards, generation, evaluation,
world, judges, compare (never another command).
"""
