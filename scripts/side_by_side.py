from cvaudit.report.side_by_side import run_side_by_side


def main(sm):
    opts = sm.params.options
    models = {k[len("model_"):]: v for k, v in sm.input.items() if k.startswith("model_")}
    run_side_by_side(models, sm.input.manifest, opts["methods"], sm.params.explain, opts["images"], sm.params.seed,
                     sm.params.device, sm.threads, out=sm.output.maps)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: the comparison says so
