"""Where a final's slowest answers fall against the VM's steal time.

    python3 contest/tail_vs_steal.py SAMPLES.csv.gz STEAL

SAMPLES: k6's CSV output (K6_OUT=csv=...). STEAL: lines "unix_second steal_jiffies_total"
(the `cpu` line of /proc/stat, column 8), one a second. Prints the run's p99 over the 2xx/3xx
requests, how many samples above it fall in seconds when the host took 10 % or more of the
CPU (20 jiffies a second on 2 CPUs at 100 Hz), and the mean steal in the seconds that hold
slow samples against the others. Seconds are k6's sample timestamps (1 s resolution).
It also tells apart the requests that opened their connection (k6's http_req_connecting > 0:
the balancer's handoff is on their path) from the rest, and how many of each are slow.
"""
import collections
import csv
import gzip
import os
import sys


def main(samples_path, steal_path):
    per_second = collections.defaultdict(list)
    # k6 writes one request's samples together, http_reqs first: (duration, opened) per request.
    requests, current = [], None
    with gzip.open(samples_path, "rt") as f:
        for row in csv.DictReader(f):
            name = row["metric_name"]
            if name == "http_reqs":
                current = {"opened": False}
                requests.append(current)
            elif name == "http_req_connecting" and current is not None:
                current["opened"] = float(row["metric_value"]) > 0
            if name != "http_req_duration":
                continue
            status = row.get("status") or "0"
            if 200 <= int(status) < 400:
                value = float(row["metric_value"])
                per_second[int(row["timestamp"])].append(value)
                if current is not None:
                    current["ok"] = value
    steal, prev = {}, None
    with open(steal_path) as f:
        for line in f:
            t, total = (int(x) for x in line.split()[:2])
            if prev is not None:
                steal[t] = total - prev
            prev = total
    per_cpu_second = 100 * (os.cpu_count() or 1)
    high = per_cpu_second // 10
    values = sorted(v for vs in per_second.values() for v in vs)
    if not values:
        sys.exit("no 2xx/3xx http_req_duration samples in " + samples_path)
    p99 = values[int(0.99 * len(values))]
    slow = collections.Counter(
        t for t, vs in per_second.items() for v in vs if v > p99
    )
    n_slow = sum(slow.values())
    in_high = sum(c for t, c in slow.items() if steal.get(t, 0) >= high)
    high_seconds = sum(1 for t in per_second if steal.get(t, 0) >= high)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    with_slow = mean([steal.get(t, 0) for t in slow])
    without = mean([steal.get(t, 0) for t in per_second if t not in slow])
    print(f"{len(values)} samples, p99 {p99:.2f} ms; {n_slow} slower, in {len(slow)} seconds")
    print(
        f"{in_high} of {n_slow} slow samples fall in the {high_seconds} of {len(per_second)} "
        f"seconds with steal >= 10 %"
    )
    print(
        f"mean steal, jiffies/s of {per_cpu_second}: {with_slow:.1f} in seconds with slow "
        f"samples, {without:.1f} in the others"
    )
    for label, opened in (("opened their connection", True), ("on a kept-alive one", False)):
        ds = sorted(r["ok"] for r in requests if "ok" in r and r["opened"] == opened)
        if ds:
            print(
                f"{len(ds)} requests {label}: p50 {ds[len(ds) // 2]:.2f} ms, "
                f"p99 {ds[int(0.99 * len(ds))]:.2f} ms, {sum(1 for d in ds if d > p99)} slower "
                f"than the run's p99"
            )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
