"""The reports as a person sees them: rendered by headless Chromium and as PDF pages (pdftoppm); hostile
names shown as text; a failed stage reported while everything else renders; the audit.fail_on gate."""
import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, TINY, smk

pytestmark = pytest.mark.e2e
XSS = "<script>alert(1)</script>"
XSS_FILE = "<img src=x onerror=alert(1)>.png"


def chromium(target: Path, *args) -> subprocess.CompletedProcess:
    """Debian's chromium, headless, offline; stderr carries the page's console messages (CONSOLE lines)."""
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--enable-logging=stderr", "--v=0", *args, target.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class DomScan(HTMLParser):
    """Elements of a rendered DOM: tags, event-handler attributes, image sources, section ids."""

    def __init__(self):
        super().__init__()
        self.tags, self.handlers, self.img_src, self.sections, self.toc = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        self.handlers += [k for k in a if k.lower().startswith("on")]
        if tag == "img":
            self.img_src.append(a.get("src") or "")
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "a" and (a.get("href") or "").startswith("#"):
            self.toc.append(a["href"][1:])


def dom(html: Path) -> DomScan:
    p = chromium(html, "--dump-dom")
    assert p.returncode == 0, p.stderr[-2000:]
    scan = DomScan()
    scan.feed(p.stdout)
    scan.text = p.stdout
    return scan


def reports(run) -> list[Path]:
    return [run / "results" / m / "report" / "report.html" for m in ("cnn_tiny", "lite0_tiny")] + \
        [run / "results" / "compare" / "report.html"]


def test_chromium_renders_every_report_without_console_errors(run, tmp_path):
    for html in reports(run):
        shot = tmp_path / f"{html.parent.parent.name}.png"
        p = chromium(html, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
        assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
        assert console_messages(p.stderr) == [], console_messages(p.stderr)
        px = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert px.shape == (2400, 1280)
        assert (px < 128).mean() > 0.01 and px.std() > 20  # text and figures drawn, not a blank page
        scan = dom(html)
        assert "script" not in scan.tags and not scan.handlers  # no code of any kind in a report
        assert scan.img_src and all(s.startswith("data:image/") for s in scan.img_src)  # self-contained
        assert scan.toc[:len(scan.sections)] == scan.sections  # the contents list every section, in order


def test_model_report_sections_come_in_the_fixed_order(run):
    from cvaudit.sections import SECTIONS
    order = [s.id for s in SECTIONS]
    for html in reports(run)[:2]:
        shown = dom(html).sections
        assert shown == [s for s in order if s in shown]
        assert {"summary", "data", "evaluation", "calibration", "attributions", "invariance", "adversarial",
                "appendix"} <= set(shown)
        assert "shuffled_labels" not in shown  # switched off in config/test.yaml: absent, not empty


def test_pdf_pages_are_numbered_and_none_is_blank(run, tmp_path):
    from pypdf import PdfReader
    for pdf in [run / "results" / m / "report" / "report.pdf" for m in ("cnn_tiny", "lite0_tiny")] + \
            [run / "results" / "compare" / "report.pdf"]:
        n = len(PdfReader(pdf).pages)
        out = tmp_path / pdf.parent.parent.name
        subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(out)], check=True, timeout=300)
        pages = sorted(tmp_path.glob(f"{out.name}-*.png"))
        assert len(pages) == n >= 3
        for page in pages:
            g = np.asarray(Image.open(page).convert("L"))
            body = g[: int(g.shape[0] * 0.9)]  # above the footer line with the page number
            assert (body < 200).mean() > 0.001, f"{page.name} is blank"  # blank: < 0.1% of pixels drawn
        text = PdfReader(pdf).pages[1].extract_text()
        assert f"page 2 of {n}" in text


def wide_comparison(run, tmp_path, n: int = 8) -> tuple[Path, Path, list[str]]:
    """n models side by side with long names and a long architecture, as HTML and PDF."""
    from cvaudit.report.compare_models import render_comparison
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summaries, cfgs, names = {}, {}, []
    for k in range(n):
        src = ["cnn_tiny", "lite0_tiny"][k % 2]
        s = json.loads((run / "results" / src / "report" / "summary.json").read_text())
        s["model"] = f"{src}_qwerty_uiop_asdf_{k}"
        names.append(s["model"])
        (tmp_path / f"{k}.json").write_text(json.dumps(s))
        summaries[s["model"]], cfgs[s["model"]] = tmp_path / f"{k}.json", cfg["models"][src]
    html, pdf = tmp_path / "c.html", tmp_path / "compare.pdf"
    render_comparison(summaries, cfgs, {}, {}, {}, {"seed": 0, "report": {"title": "wide", "compare": {"methods": []}}},
                      REPO / "templates" / "compare.html.j2", REPO / "templates" / "report.css", html,
                      tmp_path / "c.json", out_pdf=pdf)
    return html, pdf, names


def test_the_comparison_of_many_models_fits_the_a4_page(run, tmp_path):
    """Eight models side by side: no table runs past the page's right margin in the PDF."""
    _, pdf, _ = wide_comparison(run, tmp_path)
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=300)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages
    for page in pages:
        g = np.asarray(Image.open(page).convert("L"))
        margin = int(g.shape[1] * 10 / 210)  # the right margin is 12 mm of 210; look at its outer 10 mm
        body = g[: int(g.shape[0] * 0.9)]  # above the footer's page number
        assert (body[:, -margin:] < 200).sum() == 0, f"{page.name}: something crosses the right margin"
        assert (body < 200).mean() > 0.001


SEPARATORS = "_-:/."


def test_the_comparison_tables_wrap_names_at_separators_and_cut_no_badge(run, tmp_path):
    """In the PDF every piece of a wrapped model name ends or starts at a separator, and every badge is whole;
    in Chromium no cell of the two tables has content wider than the cell, and the verdict grid needs no scroll bar."""
    import re
    html, pdf, names = wide_comparison(run, tmp_path, n=5)
    words = re.findall(r'<word [^>]*>([^<]*)</word>', subprocess.run(
        ["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True, timeout=120).stdout)
    pieces = 0
    for w in {w for w in words if "_" in w or any(t in w for t in ("qwerty", "uiop", "asdf"))}:  # pieces of names
        for name in names:
            i = name.find(w)
            if i < 0 or w == name:
                continue
            pieces += 1
            assert i == 0 or name[i - 1] in SEPARATORS, f"{w!r} starts mid-word in {name!r}"
            assert i + len(w) == len(name) or w[-1] in SEPARATORS, f"{w!r} ends mid-word in {name!r}"
    assert pieces > 0, "the long names wrap somewhere (the check above saw them)"
    assert not [w for w in words if w.upper().startswith("INCONC") and w.upper() != "INCONCLUSIVE"]
    probe = tmp_path / "probe.html"
    probe.write_text(html.read_text().replace("</body>", """<script>
      const cells = [...document.querySelectorAll("table.compare td, table.compare th, table.verdict-grid td, table.verdict-grid th")];
      const over = cells.filter(c => [...c.querySelectorAll("*")].some(e => {
        const a = e.getBoundingClientRect(), b = c.getBoundingClientRect();
        return a.width > 0 && (a.left < b.left - 1 || a.right > b.right + 1); }));
      const grid = document.querySelector("table.verdict-grid");
      document.body.setAttribute("data-probe", JSON.stringify({cells: cells.length, over: over.map(c => c.textContent.trim()),
        grid: grid.getBoundingClientRect().width, page: document.documentElement.clientWidth}));
    </script></body>"""))
    out = chromium(probe, "--dump-dom", "--window-size=1280,2000").stdout
    got = json.loads(re.search(r'data-probe="([^"]*)"', out)[1].replace("&quot;", '"'))
    assert got["cells"] > 20 and got["over"] == [], got["over"][:5]
    assert got["grid"] <= got["page"]


def test_snakemake_report_archives_the_registered_outputs(run):
    import zipfile
    smk(run, "--configfile", str(run / "config.yaml"), "--report", str(run / "report.zip"))
    with zipfile.ZipFile(run / "report.zip") as z:
        names = z.namelist()
        main = z.read("report/report.html").decode()
    stored = [Path(n).name for n in names if n.startswith("report/data/raw/")]
    # 2 models x (HTML, PDF, summary) + the comparison's three: every registered output, nothing else
    assert sorted(stored) == sorted(["report.html", "report.pdf", "summary.json"] * 3)
    for label in ("Audit reports", "Comparison", "report (HTML)", "comparison (PDF)"):
        assert label in main, label


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One model on a CSV dataset whose class and file names are HTML, a report title with markup, a
    Grad-CAM layer that does not exist (that stage fails) and the gate on: the run exits non-zero."""
    work = tmp_path_factory.mktemp("hostile")
    imgs = work / "images"
    rows = []
    for label, folder in ((XSS, "bag"), ("Trouser & <b>co</b>", "trouser"), ("sneaker", "sneaker")):
        (imgs / folder).mkdir(parents=True, exist_ok=True)
        for p in sorted((TINY / folder).glob("fm*.png")):
            shutil.copy(p, imgs / folder / p.name)
            rows.append({"path": f"images/{folder}/{p.name}", "label": label})
    (imgs / "bag" / XSS_FILE).write_bytes(b"not an image")  # rejected, so listed by name in the report
    rows.append({"path": f"images/bag/{XSS_FILE}", "label": XSS})
    with open(work / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"] = {"hostile": {"source": "csv", "path": str(work / "table.csv"), "split": {"val": 0.2, "test": 0.4}}}
    cfg["models"] = {"cnn_tiny": {**cfg["models"]["cnn_tiny"], "dataset": "hostile"}}
    cfg["explain"].update(methods=["saliency", "gradcam", "deeplift"], gradcam={"layer": "no_such_layer"})
    cfg["represent"] = {"enabled": False}
    cfg["robustness"].update(invariance={"rotate": [0, 15]}, adversarial={"enabled": False})
    cfg["audit"].update(fail_on="fail")
    cfg["report"] = {"title": "<i>audit</i> of {{ 7*7 }}"}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(work, "--configfile", str(work / "config.yaml"), check=False)
    return work, p


def test_hostile_names_are_shown_as_text_never_run(hostile):
    work, _ = hostile
    html = work / "results" / "cnn_tiny" / "report" / "report.html"
    source = html.read_text()
    assert XSS not in source and "&lt;script&gt;alert(1)&lt;/script&gt;" in source
    assert "<img src=x" not in source and "&lt;img src=x onerror=alert(1)&gt;" in source  # the rejected file's name
    assert "&lt;i&gt;audit&lt;/i&gt; of {{ 7*7 }}" in source  # config value: escaped and not a template
    for page in (html, work / "results" / "compare" / "report.html"):
        scan = dom(page)
        assert "script" not in scan.tags and not scan.handlers
        p = chromium(page, f"--screenshot={work / 'x.png'}", "--window-size=1000,800")
        assert console_messages(p.stderr) == []
    # in the rendered DOM the class name is a text node of a table cell (serialised escaped), not an element
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in dom(html).text


def test_a_failed_stage_is_reported_and_the_rest_renders(hostile):
    work, _ = hostile
    rep = work / "results" / "cnn_tiny" / "report"
    summary = json.loads((rep / "summary.json").read_text())
    failed = summary["failed_stages"]
    assert [(f["rule"], f["wildcards"]["method"]) for f in failed] == [("explain", "gradcam")]
    assert "no_such_layer" in failed[0]["error"]
    html = (rep / "report.html").read_text()
    assert html.count('class="failed"') == 1 and "no_such_layer" in html
    assert "snakemake --forcerun results/cnn_tiny/explain/gradcam/maps.npz" in html
    scan = dom(rep / "report.html")
    assert {"attributions", "calibration", "invariance"} <= set(scan.sections)
    assert not {"representations", "units", "layers", "adversarial", "shuffled_labels"} & set(scan.sections)  # switched off
    assert "Vanilla gradient" in html and set(summary["attributions"]) == {"saliency", "deeplift"}
    assert "DeepLIFT (rescale) promises its map sums to F(x) − F(black)" in html  # its axiom checked per map (the tiny CNN max-pools)
    assert (rep / "report.pdf").stat().st_size > 10_000


def test_the_gate_fails_the_run_after_every_report_is_written(hostile):
    work, p = hostile
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "audit gate (config key audit.fail_on: fail) failed" in out and "stage explain" in out
    assert (work / "results" / "compare" / "report.html").exists()
    gate = json.loads((work / "results" / "gate.json").read_text())  # the evidence survives the failing run
    assert not gate["passed"] and any("stage explain" in q for q in gate["problems"])
    assert "results/gate.json lists every model and problem" in out
    assert not (work / "results" / ".gate_passed").exists()  # so a rerun checks again
    assert smk(work, "--configfile", str(work / "config.yaml"), check=False).returncode != 0
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["audit"]["fail_on"] = "never"
    (work / "never.yaml").write_text(yaml.safe_dump(cfg))
    smk(work, "--configfile", str(work / "never.yaml"))  # only the gate reruns, and passes
    gate = json.loads((work / "results" / "gate.json").read_text())
    assert gate["passed"] and gate["models"]["cnn_tiny"]["failed_stages"] == 1
