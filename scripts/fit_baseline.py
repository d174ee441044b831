from cvaudit.data.fit_baseline import fit_baseline


def main(sm):
    opts = sm.params.options
    if not opts["enabled"]:
        from cvaudit.core.files import write_json
        write_json(sm.output.metrics, {"available": False, "reason": "disabled in config (baseline.enabled)"})
        return
    fit_baseline(sm.input.manifest, size=opts["size"], max_train=opts["max_train"], seed=sm.params.seed,
                 out=sm.output.metrics)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
