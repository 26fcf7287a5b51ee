"""The listings where today's path and the gated path disagree in a `bench scan` JSON, scored both ways in
this process: the signals that moved. Needs `wall.py --photos 300` run once (its home and feed). Run from
the worktree root:

    .venv/bin/python training/experiments/issue16/diffsig.py runs/bench300c.json
"""

import json
import shutil
import sys
from pathlib import Path

from markguard.serving.scan import ScanSettings, run_scan


def _round(v: object) -> object:
    return round(v, 3) if isinstance(v, float) else v


def main() -> None:
    ids = set(json.loads(Path(sys.argv[1]).read_text())["paths"]["local"]["differing"])
    root = Path("runs/diff")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rows = [r for r in Path("runs/wall/feed300.jsonl").read_text().splitlines() if json.loads(r)["listing_id"] in ids]
    feed = root / "feed.jsonl"
    feed.write_text("\n".join(rows) + "\n")
    res: dict[str, dict] = {}
    for name, gate, runtime in (("today", False, "torch"), ("local", True, "onnx")):
        shutil.copytree("runs/wall/home", root / f"home-{name}")
        settings = ScanSettings(home=str(root / f"home-{name}"), feed=feed, workers=-1, ocr_gate=gate,
                                runtime=runtime, chunk=16)
        run_scan(settings, root / f"out-{name}", progress=False)
        res[name] = {}
        for line in (root / f"out-{name}/results.jsonl").read_text().splitlines():
            row = json.loads(line)
            res[name][row["listing_id"]] = row
    for i in sorted(ids):
        a, b = res["today"][i], res["local"][i]
        print(i, a["claimed"]["product"], "| today", a["risk"], a["decision"], "| local", b["risk"], b["decision"])
        for k in sorted(set(a["signals"]) | set(b["signals"])):
            sa, sb = a["signals"].get(k, {}), b["signals"].get(k, {})
            if sa.get("value") != sb.get("value"):
                print(f"   {k:24} {_round(sa.get('value'))!s:>8} ({_round(sa.get('contribution'))!s:>7})  ->  "
                      f"{_round(sb.get('value'))!s:>8} ({_round(sb.get('contribution'))!s:>7})")
    (root / "res.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()
