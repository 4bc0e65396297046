"""``charlab data``: turn datasets researchers already have into charlab's training files, checked."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Load and check training data: chat JSONL, HH-RLHF, instruction sets.", no_args_is_help=True)
console = Console()

OUT = typer.Option(..., "--out", "-o", help="JSONL file to write")
LIMIT = typer.Option(None, "--limit", help="read at most this many records")


@app.command("check")
def check(path: Path = typer.Argument(..., help="chat JSONL ({'messages': [...]}) to validate"),
          max_chars: int | None = typer.Option(None, "--max-chars", help="longest turn allowed")) -> None:
    """Validate a chat dataset (roles, alternation, non-empty turns, ends on the assistant).

    Example: charlab data check insecure.jsonl
    """
    from charlab.datasets.loaders import load_chat_jsonl

    rows = load_chat_jsonl(path, max_chars=max_chars)
    console.print(f"{path}: {len(rows)} conversations, all valid")


@app.command("hh-rlhf")
def hh_rlhf(path: Path = typer.Argument(..., help="HH-RLHF JSONL ({'chosen': str, 'rejected': str})"),
            out: Path = OUT, limit: int | None = LIMIT,
            sft_out: Path | None = typer.Option(None, "--sft-out", help="also write the chosen side as SFT "
                                                "conversations")) -> None:
    """Parse HH-RLHF transcripts into preference pairs (multi-turn history kept as the prompt).

    Example: charlab data hh-rlhf train.jsonl --out hh_pairs.jsonl --sft-out hh_chosen.jsonl
    """
    from charlab.datasets.loaders import hh_chosen_as_sft, load_hh_rlhf
    from charlab.io import atomic_write_jsonl

    pairs = load_hh_rlhf(path, limit=limit)
    atomic_write_jsonl(out, pairs)
    if sft_out is not None:
        atomic_write_jsonl(sft_out, hh_chosen_as_sft(pairs))
    console.print(f"{len(pairs)} pairs -> {out}" + (f"; chosen side -> {sft_out}" if sft_out else ""))


@app.command("instructions")
def instructions(source: str = typer.Argument(..., help="a .jsonl / .json file or a Hugging Face dataset name"),
                 out: Path = OUT, limit: int | None = LIMIT,
                 prompt_column: str | None = typer.Option(None, "--prompt-column"),
                 response_column: str | None = typer.Option(None, "--response-column"),
                 system_column: str | None = typer.Option(None, "--system-column"),
                 messages_column: str | None = typer.Option(None, "--messages-column"),
                 split: str = typer.Option("train", "--split", help="dataset split (hub datasets)")) -> None:
    """Load an instruction set through a column mapping and write SFT conversations.

    Example: charlab data instructions dolly.jsonl --prompt-column instruction --response-column response \\
        --out dolly_sft.jsonl
    """
    from charlab.datasets.loaders import load_instruction_set
    from charlab.io import atomic_write_jsonl

    rows = load_instruction_set(source, prompt_column=prompt_column, response_column=response_column,
                                system_column=system_column, messages_column=messages_column, split=split,
                                limit=limit)
    atomic_write_jsonl(out, rows)
    console.print(f"{len(rows)} conversations -> {out}")
