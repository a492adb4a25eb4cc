"""One module per `ebpfseccomp` subcommand; see ebpfseccomp/cli.py."""
