from cvaudit.represent.layer_views import run_layer_views


def main(sm):
    run_layer_views(sm.input.model, sm.input.manifest, sm.input.audit_set, sm.params.units, sm.params.options,
                    seed=sm.params.seed, device=sm.params.device, threads=sm.threads, out=sm.output.views)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
