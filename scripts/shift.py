from cvaudit.robust.shift import run_shift


def main(sm):
    sets = {k[len("shift_"):]: v for k, v in sm.input.items() if k.startswith("shift_")}
    run_shift(sm.input.model, sm.wildcards.model, sm.input.manifest, sm.input.probs, sets, sm.params.options,
              descriptions=dict(sm.params.descriptions), seed=sm.params.seed, device=sm.params.device, threads=sm.threads, out=sm.output.shift)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake. Not optional: a class the model lacks is a config error
