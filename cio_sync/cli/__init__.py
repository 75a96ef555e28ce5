"""The `cio-sync` commands: the only code that imports `flows/`."""
