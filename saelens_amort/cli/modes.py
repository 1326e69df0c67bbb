"""`saeamort modes`: the built-in inference modes and what each needs (from the catalog: no torch to import)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from saelens_amort.cli.app import app
from saelens_amort.catalog import BUILTIN_MODES


@app.command()
def modes() -> None:
    """List the inference modes and what each needs (λ, k, the SAE's encoder); Python code adds its own with
    saelens_amort.register_mode."""
    table = Table("mode", "needs λ", "needs k", "needs encoder", "what it does")
    for m in BUILTIN_MODES:
        table.add_row(m.name, _yes(m.needs_lambda), _yes(m.needs_k), _yes(m.needs_sae), m.summary)
    Console().print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else ""
