"""gradfit export RUN --format onnx|torchscript [--out FILE]"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gradfit.cli.common import app, imports_done, stderr_console, user_errors


@app.command("export")
@user_errors
def export(
    run: Path = typer.Argument(..., help="A run directory written by 'gradfit train', or its model.safetensors.", show_default=False),
    fmt: str = typer.Option("onnx", "--format", help="onnx (float64 inputs named after the feature columns) or torchscript.", metavar="FORMAT"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here (default: RUN/model.onnx, or RUN/model.pt for torchscript)."),
    force: bool = typer.Option(False, "--force", help="Write --out even inside another run directory."),
) -> None:
    """Export a trained model: raw feature columns in, predictions in original units out."""
    from gradfit.files import check_output  # (a plain module: no torch)
    from gradfit.results.export import export_model  # (imported here for start-up time)

    if out is not None:
        own = run if run.is_dir() else run.parent
        check_output(out, inputs=((own / "model.safetensors" if run.is_dir() else run, "the checkpoint"),),
                     force=force, writes="exports", own_runs=(own,), own_names=("model.onnx", "model.pt"))

    imports_done()
    res = export_model(run, fmt, out)
    strings = f"; strings: {', '.join(res.string_inputs)}" if res.string_inputs else ""
    check = (f"; onnxruntime agrees with gradfit to {res.max_rel_diff:.1e} (relative) on probe rows"
             if res.max_rel_diff is not None else "")
    stderr_console().print(
        f"wrote {res.format} {res.kind} model to {res.path}\ninputs (shape (n,), float64{strings}): "
        f"{', '.join(res.inputs)}; output: {res.output}{check}", soft_wrap=True, markup=False,
    )
