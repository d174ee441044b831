import logging
import os

from cvaudit.data.ingest_dataset import ingest


def main(sm):
    log = logging.getLogger("cvaudit.ingest")
    info = ingest(sm.params.dataset, sm.wildcards.dataset, sm.params.seed, out_dir=os.path.dirname(sm.output.manifest),
                  progress=log.info, workers=sm.threads, fingerprint=sm.input.fingerprint)
    log.info("%s: %d images in %d classes, %d rejected (%d duplicates kept once, %d with conflicting labels)",
             sm.wildcards.dataset, info["n_images"], len(info["classes"]), info["n_rejected"], info["n_duplicates"],
             info["n_conflicting"])


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
