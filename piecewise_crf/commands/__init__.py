"""The `piecewise-crf` commands: `cli.py` parses the arguments, and each command's module holds
its `run(args)`: the work of one subcommand, on top of the library, which it prints and writes.
Commands never import one another."""
