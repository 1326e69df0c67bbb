"""`saeamort modes`: the registered inference modes (built-in and user-registered)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from saelens_amort.cli import app


@app.command()
def modes() -> None:
    """List the registered inference modes and what each needs (λ, k, the SAE's encoder)."""
    from saelens_amort.inference import get_mode, list_modes

    table = Table("mode", "needs λ", "needs k", "needs encoder", "what it does")
    for name in list_modes():
        spec = get_mode(name)
        doc = (spec.fn.__doc__ or "").strip().splitlines()
        table.add_row(name, _yes(spec.needs_lambda), _yes(spec.needs_k), _yes(spec.needs_sae), doc[0] if doc else "")
    Console().print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else ""
