from cvaudit.explain import run_explain


def main(sm):
    run_explain(sm.wildcards.method, sm.input.model, sm.input.audit_set, sm.params.options, sm.params.trust,
                seed=sm.params.seed,
                device=sm.params.device, threads=sm.threads, out_maps=sm.output.maps,
                parts=list(sm.input.parts))  # the shards to merge; none: compute here


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
