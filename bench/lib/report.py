"""Tables (plain text / markdown), the issue-7 targets as PASS/MISS, and the chart."""
import os
import shutil
import subprocess

from workloads import HIGHER

REFS = ["tmpfs", "kernel-overlay", "fuse-overlayfs", "fuse-overlayfs-user"]

# (label, metric, reference fs, minimum ratio)  ratio = "times better than ref"
TARGETS = [("≥5× fuse-overlayfs on create", "create", "fuse-overlayfs", 5),
           ("≥5× fuse-overlayfs on unlink", "unlink", "fuse-overlayfs", 5),
           ("≥5× fuse-overlayfs on untar", "untar", "fuse-overlayfs", 5),
           ("≥5× fuse-overlayfs on warm ls -lR", "ls-lR-warm", "fuse-overlayfs", 5),
           ("≥3× fuse-overlayfs on seq 1M write", "seqwrite-1M", "fuse-overlayfs", 3),
           ("≥3× fuse-overlayfs on 4k randwrite (new)", "randwrite-4k-new", "fuse-overlayfs", 3),
           ("≥3× fuse-overlayfs on 4k randwrite (lower)", "randwrite-4k-lower", "fuse-overlayfs", 3),
           ("warm seq read ≥0.9× kernel overlayfs", "seqread-warm", "kernel-overlay", 0.9),
           ("warm 4k randread ≥0.9× kernel overlayfs", "randread-4k", "kernel-overlay", 0.9),
           ("seq 1M write ≥0.5× kernel overlayfs", "seqwrite-1M", "kernel-overlay", 0.5),
           ("4k randwrite (new) ≥0.3× kernel overlayfs", "randwrite-4k-new", "kernel-overlay", 0.3),
           ("4k randwrite (lower) ≥0.3× kernel overlayfs", "randwrite-4k-lower", "kernel-overlay", 0.3),
           ("first write into lower file ≤ kernel copy-up", "copyup-first-write", "kernel-overlay", 1.0)]
ABS_TARGETS = [("RSS per 100k walked lower files <64 MiB", "rss-per-100k-walked", 64.0),
               ("RSS per 100k empty upper files <64 MiB", "rss-per-100k-created", 64.0),
               ("open fds independent of #files (growth ≤8)", "fds-growth", 8.0)]
NO_RATIO = {"fds-after-create", "fds-growth"}


# Issue 13 (bench/run --matrix): (label, metric, fs, reference, minimum ratio)
TARGETS_13 = [("root: warm seq read ≥0.9× kernel overlayfs", "seqread-warm", "memoverlay", "kernel-overlay", 0.9),
              ("root: 4k randread ≥0.9× kernel overlayfs", "randread-4k", "memoverlay", "kernel-overlay", 0.9),
              ("root: seq 1M write ≥0.8× kernel overlayfs", "seqwrite-1M", "memoverlay", "kernel-overlay", 0.8),
              ("root, passthrough=upper: seq 1M write ≥0.8× kernel overlayfs", "seqwrite-1M",
               "memoverlay-upper", "kernel-overlay", 0.8),
              ("root: 4k randwrite (new) ≥0.5× kernel overlayfs", "randwrite-4k-new", "memoverlay", "kernel-overlay", 0.5),
              ("root: 4k randwrite (lower) ≥0.5× kernel overlayfs", "randwrite-4k-lower", "memoverlay", "kernel-overlay", 0.5),
              ("plain user: 4k randwrite (new) ≥3× fuse-overlayfs", "randwrite-4k-new", "memoverlay-user", "fuse-overlayfs-user", 3),
              ("plain user: 4k randwrite (lower) ≥3× fuse-overlayfs", "randwrite-4k-lower", "memoverlay-user", "fuse-overlayfs-user", 3),
              ("plain user: create ≥3× fuse-overlayfs", "create", "memoverlay-user", "fuse-overlayfs-user", 3),
              ("plain user: unlink ≥3× fuse-overlayfs", "unlink", "memoverlay-user", "fuse-overlayfs-user", 3)]
# (label, fs, reference, minimum ratio on every row they share)
EVERY_ROW_13 = [("plain user: every row ≥1.5× fuse-overlayfs", "memoverlay-user", "fuse-overlayfs-user", 1.5),
                ("root, libfuse 3.18: every row ≥1× fuse-overlayfs", "memoverlay", "fuse-overlayfs", 1.0),
                ("root, libfuse 3.14: every row ≥1× fuse-overlayfs", "memoverlay-314", "fuse-overlayfs", 1.0),
                ("plain user, 3.18: every row ≥1× fuse-overlayfs", "memoverlay-user", "fuse-overlayfs-user", 1.0),
                ("plain user, 3.14: every row ≥1× fuse-overlayfs", "memoverlay-314-user", "fuse-overlayfs-user", 1.0),
                ("root: no row slower on 3.18 than on 3.14", "memoverlay", "memoverlay-314", 1.0),
                ("plain user: no row slower on 3.18 than on 3.14", "memoverlay-user", "memoverlay-314-user", 1.0)]


def targets_13(metrics, fslist):
    """Issue 13's targets, for the filesystems of this run that they name."""
    res = []
    for label, metric, fs, ref, need in TARGETS_13:
        if metric in metrics and fs in fslist and ref in fslist:
            r = ratio(metrics, metric, fs, ref)
            res.append({"target": label, "metric": metric, "ref": ref, "need": need, "value": r,
                        "pass": None if r is None else r >= need})
    if "copyup-first-write" in metrics and "memoverlay" in fslist:
        v = metrics["copyup-first-write"]["median"].get("memoverlay")
        res.append({"target": "root: first write into the lower big file ≤1 ms", "metric": "copyup-first-write",
                    "ref": None, "need": 1.0, "value": v, "pass": None if v is None else v <= 1.0})
    for label, fs, ref, need in EVERY_ROW_13:
        if fs not in fslist or ref not in fslist:
            continue
        rs = [(ratio(metrics, m, fs, ref), m) for m in metrics]
        rs = [x for x in rs if x[0] is not None]
        if rs:
            worst = min(rs)
            ok = sum(1 for r, _ in rs if r >= need)
            res.append({"target": "%s (%d/%d rows; worst %s)" % (label, ok, len(rs), worst[1]),
                        "metric": "*", "ref": ref, "need": need, "value": worst[0],
                        "pass": ok == len(rs)})
    return res


def ratio(metrics, metric, fs, ref):
    m = metrics[metric]
    a, b = m["median"].get(fs), m["median"].get(ref)
    if a is None or b is None or a <= 0 or b <= 0 or metric in NO_RATIO:
        return None
    return a / b if m["better"] == HIGHER else b / a


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    if a >= 0.1:
        return "%.2f" % v
    return "%.3f" % v


def fmtr(r):
    if r is None:
        return "-"
    return ("%.2f×" % r) if r < 10 else ("%.1f×" % r) if r < 100 else ("%.0f×" % r)


def table(header, rows):
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = ["| " + " | ".join(str(h).ljust(w[i]) for i, h in enumerate(header)) + " |",
           "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    for r in rows:
        out.append("| " + " | ".join((str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]))
                                     for i, c in enumerate(r)) + " |")
    return "\n".join(out)


def targets(metrics, fslist):
    res = []
    if "memoverlay" not in fslist:
        return res
    for label, metric, ref, need in TARGETS:
        if metric not in metrics or ref not in fslist:
            continue
        r = ratio(metrics, metric, "memoverlay", ref)
        res.append({"target": label, "metric": metric, "ref": ref, "need": need, "value": r,
                    "pass": None if r is None else r >= need})
    # ≥ fuse-overlayfs on every row: one summary line (per row: PASS/MISS column of that table)
    if "fuse-overlayfs" in fslist:
        rs = [(ratio(metrics, m, "memoverlay", "fuse-overlayfs"), m) for m in metrics]
        rs = [x for x in rs if x[0] is not None]
        if rs:
            worst = min(rs)
            ok = sum(1 for r, _ in rs if r >= 1.0)
            res.append({"target": "≥1× fuse-overlayfs on every row (%d/%d rows; worst %s)"
                                  % (ok, len(rs), worst[1]),
                        "metric": "*", "ref": "fuse-overlayfs", "need": 1.0, "value": worst[0],
                        "pass": ok == len(rs)})
    for label, metric, limit in ABS_TARGETS:
        if metric in metrics:
            v = metrics[metric]["median"].get("memoverlay")
            res.append({"target": label, "metric": metric, "ref": None, "need": limit, "value": v,
                        "pass": None if v is None else v <= limit})
    return res


def target_table(tgts):
    rows = []
    for t in tgts:
        got = fmt(t["value"]) if t["ref"] is None else fmtr(t["value"])
        st = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        rows.append([t["target"], "%s %s" % (st, got)])
    npass = sum(1 for t in tgts if t["pass"])
    return table(["target", "result"], rows) + "\n\n%d of %d targets met." % (npass, len(tgts))


def markdown(meta, metrics, fslist, tgts, errors):
    L = []
    L.append("# memoverlay bench — %s run, %s" % (meta["profile"], meta["date"]))
    L.append("")
    L.append("Machine: %s, %d CPUs, kernel %s. Repetitions: %d (median). memoverlay %s."
             % (meta["host"], meta["cpus"], meta["kernel"], meta["reps"], meta["memoverlay_commit"]))
    L.append("Sizes: big file %d MiB, tree %d entries, %d files (create/stat/unlink), %d dirs, "
             "%d upper files (memory), fio runtime %ss."
             % (meta["sizes"]["big"] >> 20, meta["sizes"]["tree"], meta["sizes"]["files"],
                meta["sizes"]["dirs"], meta["sizes"]["memfiles"], meta["sizes"]["runtime"]))
    L.append("Lower checksum before %s, after %s: %s."
             % (meta["lower_sha256_before"][:16], meta["lower_sha256_after"][:16],
                "unchanged" if meta["lower_sha256_before"] == meta["lower_sha256_after"] else "CHANGED"))
    L.append("")
    L.append("## Absolute numbers (median)")
    L.append("")
    rows = []
    for metric, m in metrics.items():
        rows.append([metric, m["unit"] + (" ↑" if m["better"] == HIGHER else " ↓")]
                    + [fmt(m["median"].get(fs)) for fs in fslist])
    L.append(table(["workload", "unit"] + fslist, rows))
    L.append("")
    L.append("↑ higher is better, ↓ lower is better.")
    # variants (bench/run --variant) are compared with memoverlay itself too
    refs = REFS + (["memoverlay"] if any(f.startswith("memoverlay-") for f in fslist) else [])
    for ref in refs:
        if ref not in fslist:
            continue
        others = [f for f in fslist if f != ref]
        L.append("")
        L.append("## Ratio to %s (× = times better than %s; >1 is better)" % (ref, ref))
        L.append("")
        rows = []
        verdict = ref == "fuse-overlayfs" and "memoverlay" in others
        for metric in metrics:
            rs = [ratio(metrics, metric, fs, ref) for fs in others]
            if all(r is None for r in rs):
                continue
            row = [metric] + [fmtr(r) for r in rs]
            if verdict:
                r = rs[others.index("memoverlay")]
                row.append("-" if r is None else ("PASS" if r >= 1.0 else "MISS"))
            rows.append(row)
        L.append(table(["workload"] + others + (["memoverlay ≥1×"] if verdict else []), rows))
    if tgts:
        L.append("")
        L.append("## Issue 7 targets for memoverlay")
        L.append("")
        L.append(target_table(tgts))
    t13 = targets_13(metrics, fslist)
    if t13:
        L.append("")
        L.append("## Issue 13 targets")
        L.append("")
        L.append(target_table(t13))
    if errors:
        L.append("")
        L.append("## Failures")
        L.append("")
        for e in errors:
            L.append("- rep %d, %s, %s: %s" % (e["rep"], e["workload"], e["fs"], e["error"]))
    L.append("")
    return "\n".join(L)


def chart(path, metrics, fslist, datadir, log):
    """Grouped bars: each fs's ratio to fuse-overlayfs per workload, log scale."""
    if "fuse-overlayfs" not in fslist:
        log("chart: skipped (needs fuse-overlayfs as the reference)")
        return False
    gp = shutil.which("gnuplot")
    if not gp:
        log("chart: skipped (gnuplot not installed)")
        return False
    # memoverlay first in each group, then the others in run order
    others = sorted([f for f in fslist if f != "fuse-overlayfs"], key=lambda f: f != "memoverlay")
    rows = []
    for metric in metrics:
        rs = [ratio(metrics, metric, fs, "fuse-overlayfs") for fs in others]
        if all(r is None for r in rs):
            continue
        rows.append((metric, rs))
    if not rows:
        log("chart: nothing to plot")
        return False
    dat = os.path.join(datadir, "chart.dat")
    with open(dat, "w") as f:
        f.write("workload " + " ".join('"%s"' % o for o in others) + "\n")
        for metric, rs in rows:
            f.write('"%s" ' % metric + " ".join("%.4g" % r if r else "NaN" for r in rs) + "\n")
    colors = {"tmpfs": "#9e9e9e", "kernel-overlay": "#4c72b0", "unionfs-fuse": "#dd8452",
              "memoverlay": "#2ca02c"}
    plots = []
    for i, o in enumerate(others):
        plots.append("'%s' using %d:xtic(1) title columnheader(%d) lc rgb '%s'"
                     % (dat, i + 2, i + 2, colors.get(o, "#8172b2")))
    width = min(2000, max(1000, 60 * len(rows) + 300))
    script = """
set terminal pngcairo size %d,900 font 'DejaVu Sans,13'
set output '%s'
set title "How many times better than fuse-overlayfs (red line = 1×; above = faster or less memory; log scale)"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set logscale y 10
set yrange [0.01:*]
set grid ytics mytics
set ytics format "%%g×"
set xtics rotate by -45 left noenhanced nomirror
set key top right horizontal noenhanced opaque
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 lc rgb '#c44e52'
set bmargin 11
set rmargin 8
plot %s
""" % (width, path, ", \\\n     ".join(plots))
    p = subprocess.run([gp], input=script, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        log("chart: gnuplot failed: " + p.stderr.strip()[-300:])
        return False
    return True
