import logging
import os

from cvaudit.data.plant_cue import plant


def main(sm):
    log = logging.getLogger("cvaudit.data.plant_cue")
    info = plant(sm.params.dataset, sm.wildcards.dataset, sm.input.parent, sm.params.seed,
                 out_dir=os.path.dirname(sm.output.manifest), progress=log.info)
    marked = {s: sum(c[s] for c in info["marked"].values()) for s in ("train", "val", "test")}
    log.info("%s: %d images copied from %s; the cue on %d train, %d val and %d test images; %d near duplicates "
             "planted in test", sm.wildcards.dataset, info["n_images"], info["from"], marked["train"], marked["val"],
             marked["test"], len(info["planted_duplicates"]))


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
