"""The `rere` subcommands: each module registers its own parser with `register(commands)`."""
