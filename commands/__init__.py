"""The typer commands, one module per feature; `qwythos.cli` assembles them."""
