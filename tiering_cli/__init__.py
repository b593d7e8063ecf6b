"""The `tiering` command line: the top floor, composing the packages' commands."""
