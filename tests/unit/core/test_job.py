"""The job glue (cvaudit.core.job): one part of a job that computes several fails alone."""
import json
import logging
from types import SimpleNamespace

from cvaudit.core.files import FAILED_KEY, write_json
from cvaudit.core.job import part_of


def test_a_failed_part_leaves_a_record_in_its_own_place_and_the_next_part_runs(tmp_path, caplog):
    outs = [tmp_path / "noise.json", tmp_path / "rotate.json"]
    log = tmp_path / "job.log"
    log.write_text("computing noise\n")
    sm = SimpleNamespace(output=[str(o) for o in outs], log=[str(log)], rule="invariance_model",
                         wildcards=SimpleNamespace(items=lambda: [("model", "m")], model="m"))

    def broken():
        raise KeyError("drift")

    with caplog.at_level(logging.ERROR, logger="cvaudit"):
        ok = [part_of(sm, "invariance", {"model": "m", "family": f}, [o], job)
              for f, o, job in (("noise", outs[0], broken), ("rotate", outs[1], lambda: write_json(outs[1], {"n": 4})))]
    assert ok == [False, True]
    rec = json.loads(outs[0].read_text())[FAILED_KEY]
    assert rec["rule"] == "invariance" and rec["wildcards"] == {"model": "m", "family": "noise"}  # as its own job
    assert rec["error"] == "KeyError: 'drift'" and rec["outputs"] == [str(outs[0])] and rec["log_tail"][0] == "computing noise"
    assert json.loads(outs[1].read_text()) == {"n": 4}
    assert "stage invariance model=m, family=noise FAILED (KeyError: 'drift')" in caplog.text
    assert f"snakemake --forcerun {outs[0]}" in caplog.text
