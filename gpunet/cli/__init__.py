"""The `gpunet` command line: `gpunet <command> [options]`.

Each command is a module in this package that defines `add_parser(subparsers)`; that function adds
its sub-parser and sets `func` (called with the parsed arguments, returns an exit status). `main.py`
finds the modules itself, so a new command (parity, bench, diagnose, tune, ...) is one new file.
Modules keep heavy imports inside their `func`, so `gpunet --help` stays fast.
"""
