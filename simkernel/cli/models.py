"""The commands about models: train a small transformer, icl-eval and measure a trained one,
and llm (a real Hugging Face model on a text task or a simulator world).  torch is imported
inside the commands only, so ``--help`` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..constants import (DEMO_MODES, LLM_BATCH_SIZE, LLM_DTYPES, LLM_DTYPE_ALIASES, LLM_N_EXAMPLES, MODEL_NAMES,
                         TEXT_N_DEMOS, TEXT_TASKS)
from ..options import comma_words, Concepts, Int, NDemos, NONNEG, POSITIVE, PositiveFloat, probe_layers, progress_bar
from .common import (TRAIN_WORLD, checking_arguments, fail, given, clash, world_options, world_spec, load_world_args, seed_option,
                     device_option, example_length_option, out_option, heads_options, progress_pair, wrote)


# ---------------------------------------------------------------------- train
@click.command("train", short_help="Train a small transformer on a world's documents; gap to the Bayes floor.")
@click.option("--corpus", "corpus_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Corpus folder made by `simkernel sample corpus`.  Without it, a corpus is sampled into the "
                   "run folder from the world options with --n-docs and --doc-length.")
@world_options(f"{TRAIN_WORLD[0]} with concentration=0.1", what="the world of the sampled corpus")
@click.option("--n-docs", type=POSITIVE, default=2000, show_default=True, help="Documents to sample.")
@click.option("--doc-length", type=POSITIVE, default=1024, show_default=True, help="Symbols per sampled document.")
@click.option("--corpus-seed", type=NONNEG, default=0, show_default=True, help="Seed of the sampled corpus.")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="cpu", show_default=True,
              help="Model preset: tiny (tests), cpu (CPU default), ginc-4/12/16 (GINC-sized, GPU).")
@click.option("--block-size", type=Int(2), default=128, show_default=True,
              help="Symbols per training block (at most the model's context).")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True, help="Blocks per step (per rank).")
@click.option("--lr", type=PositiveFloat("the learning rate"), default=1e-3, show_default=True,
              help="Peak learning rate (linear warm-up, cosine decay to a tenth).")
@click.option("--warmup", type=NONNEG, default=100, show_default=True, help="Warm-up steps.")
@click.option("--max-steps", type=POSITIVE, default=3000, show_default=True, help="Stop after this many steps.")
@click.option("--eval-every", type=POSITIVE, default=100, show_default=True, help="Steps between evaluations.")
@click.option("--target-gap", type=PositiveFloat("the target gap"), default=0.05, show_default=True,
              help="Stop when val loss - Bayes floor < this (nats/token).")
@click.option("--patience", type=POSITIVE, default=10, show_default=True,
              help="Stop after this many evaluations without improvement of the val loss.")
@click.option("--ckpt-every", type=POSITIVE, default=500, show_default=True, help="Steps between checkpoints.")
@device_option()
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@seed_option("Seed of the weights and of the batches.")
@click.option("--resume", is_flag=True, help="Continue this config's interrupted run from its checkpoint.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Run folders live here, each named by a hash of its config.")
def train_cmd(corpus_dir, preset, world_file, world_seed, overrides, n_docs, doc_length, corpus_seed,
              model_name, block_size, batch_size, lr, warmup, max_steps, eval_every, target_gap, patience,
              ckpt_every, device, compile_, seed, resume, runs_dir):
    """Train a small GPT-J on a world's documents until its held-out loss is within
    --target-gap of the exact Bayes floor (or --patience / --max-steps run out).  Rerunning a
    finished config prints where it is; --resume continues an interrupted one.  One run at a
    time per config: a second one refuses while the first holds the run folder."""
    from ..options import StagedBars

    ctx = click.get_current_context()
    world = source = None
    if corpus_dir is not None:
        clash("--corpus uses an existing corpus; it",
               [("--preset", preset is not None), ("--world", world_file is not None), ("--set", bool(overrides))]
               + [(f"--{o.replace('_', '-')}", given(ctx, o)) for o in ("world_seed", "n_docs", "doc_length",
                                                                         "corpus_seed")])
    else:
        if world_file is None and preset is None and not overrides:
            preset, overrides = TRAIN_WORLD
        world, source = load_world_args(preset, world_file, world_seed, overrides)

    from .. import train as tr     # imports torch and transformers

    with checking_arguments():
        corpus_id = (tr.corpus_identity(corpus_dir) if corpus_dir is not None
                     else tr.sampled_corpus(source, n_docs, doc_length, corpus_seed))
    cfg = tr.TrainConfig(corpus=corpus_id, model=model_name, block_size=block_size, batch_size=batch_size,
                         lr=lr, warmup_steps=warmup, max_steps=max_steps, eval_every=eval_every,
                         target_gap=target_gap, patience=patience, ckpt_every=ckpt_every, seed=seed,
                         device=device, compile=compile_)
    with StagedBars() as bars:
        try:
            res = tr.run(cfg, runs_dir, corpus_dir=corpus_dir, world=world, resume=resume,
                         progress=lambda step, info: bars.show("training", max_steps, "step", step, loss=info["loss"],
                                                               gap=info.get("gap")),
                         sample_progress=lambda n: bars.show("sampling", n_docs, "doc", n))
        except tr.Interrupted as e:
            if e.rank != 0:       # under torchrun rank 0 speaks for the run
                return 130
            then = (f"and {e.checkpoint_text}; rerun the same command with --resume to continue" if e.has_checkpoint
                    else "but no checkpoint yet; rerun the same command to start over")
            return fail(f"interrupted at step {e.step}: {str(e.run_dir)!r} holds {e.contents} {then}", 130)
    if res.rank == 0:
        if res.note:            # a damaged finished run trained again, or an older one's hashes recorded
            click.echo(f"warning: {res.note}", err=True)
        click.echo(res.summary_line())
    return 0


# ---------------------------------------------------------------------- icl-eval
@click.command("icl-eval", short_help="A trained model's in-context predictions against exact Bayes and the "
                                     "theory kernel, with a figure.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A training run folder (made by `simkernel train`).")
@click.option("--n-demos", type=NDemos(minimum=0), default="0,1,2,4,8,16,32,64", show_default=True,
              help="Numbers of demonstrations; n whose prompt exceeds the model's context is skipped.")
@example_length_option(3)
@click.option("--n-prompts", type=POSITIVE, default=200, show_default=True, help="Prompts per concept group.")
@seed_option("Prompt sampling seed.")
@click.option("--concepts", type=Concepts(), multiple=True,
              help="Concept group(s): prior, id, ood or an index; repeatable.  Default: id and ood when the world "
                   "has prior-0 concepts, else prior.")
@device_option()
@out_option(None, "Folder for icl_vs_bayes.csv/.json/.png (default: the run folder).")
@click.option("--figures", "to_figures", is_flag=True, help="Also copy the three files into ./figures.")
def icl_eval_cmd(run_dir, n_demos, example_length, n_prompts, seed, concepts, device, out, to_figures):
    """Evaluate a trained model's in-context learning: for every n, the model's next-symbol
    distribution after x_test (restricted to the labels) against the exact Bayesian posterior
    predictive, the theory kernel estimator (`simkernel converge`'s defaults: theory kernel,
    belief features, ridge 0.01; n >= 1), the label frequencies of the demonstrations (the
    baseline every kernel sits beside) and the oracle, on the same prompts.  Metrics (mean, 95%
    CI over prompts; agreement and accuracy tie-fair: a tie among m labels scores 1/m):
    tv_bayes, agree_bayes, acc_model, acc_bayes, acc_oracle, tv_oracle, tv_kernel, agree_kernel,
    acc_kernel, tv_kernel_bayes (normalised estimator; the averaged and clipped ones with the
    suffixes _averaged, _clipped), tv_frequency, agree_frequency, acc_frequency,
    tv_frequency_bayes.  Writes icl_vs_bayes.csv (tidy), .json (provenance) and .png (one row
    of panels per concept group: in- and out-of-distribution)."""
    from ..icl_eval import run_paths
    from ..store import check_results_dir

    with checking_arguments():                   # one-line errors before torch is imported
        run_paths(run_dir)
        out = check_results_dir(run_dir if out is None else out)
        copy_to = check_results_dir(Path("figures")) if to_figures else None
    from .. import icl_eval

    res = icl_eval.run(run_dir, n_demos, example_length, n_prompts, seed=seed, concepts=list(concepts),
                       device=device)
    written = res.write(out, copy_to=copy_to)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- measure
@click.command("measure", short_help="Attention, reconstruction and probes of a trained model vs the true kernel.")
@click.option("--checkpoint", "checkpoints", type=click.Path(file_okay=False, path_type=Path), required=True,
              multiple=True, help="A training run folder (made by `simkernel train`) or its checkpoint/model "
                                  "folder; repeat for several training seeds of one world (same prompts).")
@click.option("--n-prompts", type=Int(2), default=1000, show_default=True,
              help="Prompts (split into head-selection and held-out report sets).")
@click.option("--n-demos", type=POSITIVE, default=16, show_default=True,
              help="Demonstrations per prompt (16 x 4 + 2 = 66 symbols at k = 3, inside 128-symbol blocks).")
@example_length_option(3)
@click.option("--concepts", type=Concepts(), default="prior", show_default=True,
              help="Which concepts prompts come from: prior, id, ood or an index.")
@heads_options()
@seed_option("Prompt sampling and split seed.")
@device_option()
@out_option(None, "Folder for the tables, measure.json and figures (default: RUN/measure of the first run).")
@click.option("--figures", "to_figures", is_flag=True, help="Also copy the files into ./figures/measure.")
def measure_cmd(checkpoints, n_prompts, n_demos, example_length, concepts, weight, n_select, n_report, seed,
                device, out, to_figures):
    """Measure kernel regression inside a trained model, against the ground truth.

    For prompts sampled from the run's world: the final token's attention in every layer and
    head; the attention profile over demonstration spans; each head's vote Σ_i a_i [y_i = c]
    beside the votes of reference weights (uniform, the theory kernel clipped at 0, the
    prediction similarity, the best non-negative weights, the head's own weights shuffled),
    scored against the model, the gold label, exact Bayes and the oracle by tie-fair agreement
    (a tie among m labels scores 1/m; head chosen on --n-select prompts, reported on --n-report
    others, head-minus-reference differences with paired bootstrap CIs); within-prompt
    correlation of a_i with the true kernel and the prediction similarity; ridge probes of keys
    and values.  Writes heads.csv, best.csv, profile.csv, probes.csv, measure.json and figures."""
    from ..alignment import run_folder
    from ..icl_eval import run_paths
    from ..store import check_results_dir

    with checking_arguments():                 # one-line errors before torch is imported
        run_dirs = [run_folder(c) for c in checkpoints]
        for d in run_dirs:
            run_paths(d)
        out = check_results_dir(run_dirs[0] / "measure" if out is None else out)
        copy_to = check_results_dir(Path("figures") / "measure") if to_figures else None
    from .. import alignment

    bar, tick = progress_pair(4 * len(run_dirs), "measure", "stage")
    with bar:
        res = alignment.run(checkpoints if len(checkpoints) > 1 else checkpoints[0], n_prompts, n_demos,
                            example_length, concepts=concepts, weight=weight, n_select=n_select,
                            n_report=n_report, seed=seed, device=device,
                            progress=lambda stage: (bar.update(1), bar.set_postfix_str(stage)))
    written = res.write(out, copy_to=copy_to)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(f"wrote {len(written)} files into {out}" + (f" and {copy_to}" if to_figures else "")
               + f" ({res.meta['elapsed_s']:.1f} s)")




# ---------------------------------------------------------------------- llm
@click.command("llm", short_help="The kernel-regression measurements on a real Hugging Face LLM (Table 2).")
@click.option("--model", "model_name", required=True, metavar="NAME",
              help="An alias (gpt-j-6b, gpt2, gpt2-medium/large/xl, pythia-160m/410m/1.4b/6.9b, llama-2-7b, "
                   "llama-3-8b), a hub id (org/name), or a folder made by save_pretrained.  Hub weights must be "
                   "downloaded beforehand (or reachable).")
@click.option("--revision", default=None, help="Hub branch, tag or commit (default: main).")
@click.option("--task", type=click.Choice(TEXT_TASKS), default=None,
              help="A task of the paper, read through `datasets` (default sst2 unless --data is given).")
@click.option("--split", default=None, help="The task's split (default: sst2/mnli validation, the others test).")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A local .csv, .tsv (GLUE's sentence<TAB>label) or .jsonl file instead of --task; "
                   "demonstrations are drawn from its other rows.")
@click.option("--text-column", default="sentence", show_default=True, callback=comma_words("column"),
              help="With --data: the text column; 'premise,hypothesis' for a pair task.")
@click.option("--label-column", default="label", show_default=True,
              help="With --data: the label column (class indices or label words).")
@click.option("--label-words", default="Negative,Positive", show_default=True, callback=comma_words("label word"),
              help="With --data: the answer word of each class 0, 1, ... (scored on its first token).")
@click.option("--n-demos", default=None, metavar="N|LIST",
              help=f"Demonstrations per prompt (default {TEXT_N_DEMOS}: SST-2 prompts near 300 GPT-J tokens); with a "
                   f"simulator world a list of n, e.g. 0,1,2,4,8,16 (the default).")
@world_options("none: a text task", many_seeds=True, what="a simulator world whose prompts are rendered as text "
               "(instead of --task/--data; docs/guide/llm-world.md)")
@click.option("--demos", "mode", type=click.Choice(DEMO_MODES), default="random", show_default=True,
              help="How demonstrations are drawn: uniformly, class-balanced, or the most similar pool texts "
                   "(TF-IDF), each example with its own seed.")
@click.option("--n-examples", type=Int(2), default=LLM_N_EXAMPLES, show_default=True,
              help="Test examples (a seeded subset when the split has more; all when it has fewer).")
@heads_options("examples")
@click.option("--split-seed", type=NONNEG, default=0, show_default=True, help="Seed of the select/report split.")
@seed_option("Seed of the test subset and of every example's demonstrations.")
@click.option("--probe-layers", default="auto", show_default=True, callback=probe_layers,
              help="Layers whose keys and values are probed: auto (all when their float32 keys and values fit "
                   "4 GiB; else evenly spaced ones), all, none, or indices such as 16..21 or 3,7,14.")
@click.option("--max-text-tokens", type=POSITIVE, default=None, help="Cut each text to this many tokens.")
@click.option("--dtype", type=click.Choice(LLM_DTYPES + tuple(LLM_DTYPE_ALIASES)), default="auto", show_default=True,
              help="auto: bfloat16 on CUDA, float32 on CPU (the cache key holds the resolved dtype).")
@device_option()
@click.option("--device-map", default=None,
              help="Spread the model over several GPUs through accelerate, e.g. 'auto' (instead of --device).")
@click.option("--batch-size", type=POSITIVE, default=LLM_BATCH_SIZE, show_default=True,
              help="Prompts per forward pass.")
@out_option(None, "Run folder (default runs/llm/<model>-<task>): tables, figures, llm.json and the cached model "
                "outputs outputs-<hash>.npz.")
def llm_cmd(model_name, revision, task, split, data_file, text_column, label_column, label_words, n_demos, preset,
            world_file, world_seeds, overrides, mode, n_examples, weight, n_select, n_report, split_seed, seed,
            probe_layers, max_text_tokens, dtype, device, device_map, batch_size, out):
    """The paper's §5 measurements on a real causal LM: the model's own ICL accuracy, the final
    token's attention profile over the demonstrations, each head's kernel-regression
    reconstruction of the prediction (Table 2: best head chosen on --n-select examples,
    reported on --n-report held-out ones) beside the uniform vote and the other references,
    the correlation of each head's weights with the prediction similarity
    P(o|x_test)ᵀP(o|x_i), and ridge probes of keys (-> the demonstration's standalone
    prediction) and values (-> its label) at label position -1..+3.

    Writes heads.csv, best.csv, profile.csv, probes.csv (tidy), llm.json (config, model id and
    revision, data, seed, versions, summary), attention_profile.png, head_scores.png,
    probes.png, and caches the model's outputs as outputs-<hash>.npz: rerunning with another
    --weight, --n-select/--n-report or --split-seed does not run the model again.
    """
    from .. import hf, llm
    from ..store import check_results_dir

    ctx = click.get_current_context()
    if preset is not None or world_file is not None:
        return _llm_world(ctx, model_name, revision, preset, world_file, world_seeds, overrides, n_demos, weight,
                          n_select, n_report, seed, probe_layers, dtype, device, batch_size, out)
    if n_demos is None:
        n_demos = TEXT_N_DEMOS
    else:
        n_demos = POSITIVE.convert(n_demos, ctx.command.params[[p.name for p in ctx.command.params].index("n_demos")],
                                   ctx)
    if data_file is not None:
        clash("--data reads a local file; it", [("--task", task is not None), ("--split", split is not None)])
        data = llm.DataSpec(path=str(data_file), text_column=text_column, label_column=label_column,
                            label_words=label_words)
    else:
        clash("--task", [(f"--{o.replace('_', '-')} (it describes a --data file)", given(ctx, o))
                          for o in ("text_column", "label_column", "label_words")])
        data = llm.DataSpec(task=task or "sst2", split=split)
    with checking_arguments():                         # a one-line error before anything is created
        hf.resolve_model(model_name)
        out = check_results_dir(llm.text_default_out(model_name, data) if out is None else out)
    job = llm.run(model_name, data, out, revision=revision, n_demos=n_demos, mode=mode, seed=seed,
                  n_examples=n_examples, how=weight, n_select=n_select, n_report=n_report, split_seed=split_seed,
                  probe_layers=probe_layers, max_text_tokens=max_text_tokens, dtype=dtype, device=device,
                  device_map=device_map, batch_size=batch_size,
                  bar=lambda desc, total: progress_bar(total, desc, "prompt"),
                  on_load=_memory_echo)
    written = job.write(out)
    for line in job.summary_lines():
        click.echo(line)
    click.echo(wrote(written, job.meta["elapsed_s"]))


def _memory_echo(msg: str) -> None:
    """The llm branches' progress messages on stderr: the memory estimate (printed before the weights
    load) unless SIMKERNEL_PROGRESS is none, the others only on a terminal."""
    import os

    from ..options import PROGRESS_ENV

    if (msg.startswith("memory:") and os.environ.get(PROGRESS_ENV) != "none") or sys.stderr.isatty():
        click.echo(msg, err=True)


def _llm_world(ctx, model_name, revision, preset, world_file, world_seeds, overrides, n_demos, weight, n_select,
               n_report, seed, probe_layers, dtype, device, batch_size, out):
    """`simkernel llm --preset/--world`: the LM on a simulator world's prompts rendered as text."""
    from .. import hf, llm_world
    from ..options import parse_n_demos
    from ..store import check_results_dir

    clash("--preset/--world renders a simulator world; it", [
        (f"--{o.replace('_', '-')}", given(ctx, o)) for o in
        ("task", "split", "data_file", "text_column", "label_column", "label_words", "mode", "n_examples",
         "split_seed", "max_text_tokens", "device_map")])
    spec = world_spec(preset, world_file, overrides, "world_seeds")
    if world_file is None:
        spec.pop("world_file")
        spec["world_seeds"] = tuple(world_seeds) or (0,)
    else:
        spec = {"world_file": world_file}
    if n_demos is not None:
        try:
            spec["n_demos"] = parse_n_demos(n_demos, minimum=0)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param_hint="--n-demos") from None
    with checking_arguments():
        hf.resolve_model(model_name)
        out = check_results_dir(llm_world.world_default_out(model_name, preset, world_file) if out is None else out)
    res = llm_world.run(model_name, revision=revision, weight=weight, n_select=n_select, n_report=n_report, seed=seed,
                        probe_layers=probe_layers, dtype=dtype, device=device, batch_size=batch_size, cache_dir=out,
                        progress=_memory_echo, **spec)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(wrote(written, res.meta.get("elapsed_s", 0.0)))
