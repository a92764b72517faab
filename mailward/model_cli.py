"""``mailward model``: train the base content model on labelled corpora, and show what a model file holds.

Registered in :mod:`mailward.cli` with ``cli.add_command(model)``.
"""

from __future__ import annotations

from pathlib import Path

import click

from tenants.content.model import BASE_MODEL


@click.group()
def model() -> None:
    """The base content model (the MSP-level prior every tenant starts from)."""


@model.command("train")
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="DIR",
              type=click.Path(path_type=Path),
              help="A labelled corpus (SpamAssassin folders, or SETNAME/<ham|spam|phish>/*.eml), or a folder of them.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=BASE_MODEL, show_default=True,
              help="Where to write the model (.npz).")
@click.option("--scores", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the band scores derived in training as a score file (tenants/scores/content.toml).")
@click.option("--jobs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes that parse mail (0: one per core).")
def model_train(corpora: tuple[Path, ...], out: Path, scores: Path | None, jobs: int) -> None:
    """Train the base model on the training part of each corpus; report each held-out part (never trained on)."""
    from tenants.content.corpus import find_collections
    from tenants.content.train import scores_toml, train

    collections = find_collections(list(corpora))
    for c in collections:
        click.echo(f"corpus {c.name}: {len(c.train)} mails to train on, {len(c.heldout)} held out")
    result = train(collections, jobs=jobs, progress=lambda line: click.echo(f"  {line}"))
    result.model.save(out)
    click.echo(f"model {result.model.version} written to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if scores is not None:
        scores.write_text(scores_toml(result.model))
        click.echo(f"band scores written to {scores}")
    _describe(result.model.meta)


@model.command("info")
@click.option("--model", "path", type=click.Path(dir_okay=False, path_type=Path), default=BASE_MODEL,
              show_default=True, help="The model file.")
def model_info(path: Path) -> None:
    """Show a model's version, what it was trained on, its calibration and its held-out figures."""
    from tenants.content.model import ContentModel

    loaded = ContentModel.load(path)
    click.echo(f"model {loaded.version} ({path}, {path.stat().st_size / 1e6:.1f} MB, "
               f"{int((loaded.weights != 0).sum())} non-zero weights)")
    _describe(loaded.meta)


def _describe(meta: dict[str, object]) -> None:
    trained = meta.get("trained_on")
    if isinstance(trained, dict):
        for name, counts in trained.items():
            click.echo(f"  trained on {name}: {counts.get('spam', 0)} spam, {counts.get('ham', 0)} ham "
                       f"({counts.get('dropped', 0)} copies of held-out or earlier mail dropped)")
    click.echo(f"  prior weight (calibration slope, from out-of-collection scores): {meta.get('prior_weight')}")
    for title, key in (("out of collection (training parts)", "out_of_collection"), ("held out", "heldout")):
        table = meta.get(key)
        if isinstance(table, dict):
            for name, f in table.items():
                click.echo(f"  {title} {name}: {f['spam']} spam / {f['ham']} ham, recall "
                           f"{100 * f['recall_at_fp_01']:.1f}% at <=0.1% FP, {100 * f['recall_at_fp_1']:.1f}% at "
                           f"<=1% FP")
    bands = meta.get("band_scores")
    if isinstance(bands, dict):
        click.echo("  band scores: " + ", ".join(f"{k} {v:+g}" for k, v in bands.items()))
