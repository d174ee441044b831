from cvaudit.model.export_onnx import write_onnx


def main(sm):
    write_onnx(sm.input.model, sm.output.onnx)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
