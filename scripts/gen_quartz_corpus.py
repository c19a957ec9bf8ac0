"""Regenerate tests/data/quartz_corpus.json from real Quartz (the oracle for aioelastic's cron).

Needs a JDK (``javac``/``java``) and the Quartz 2.3 jar (Debian: ``apt-get install
libquartz2-java``; or set ``QUARTZ_JAR``). Compiles tests/quartz/QuartzOracle.java in a temporary
directory, asks it for fire times and parse verdicts, and writes the corpus deterministically
(the same Quartz and tz data give byte-identical output)::

    .venv/bin/python scripts/gen_quartz_corpus.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
ORACLE = ROOT / "tests" / "quartz" / "QuartzOracle.java"
OUTPUT = ROOT / "tests" / "data" / "quartz_corpus.json"
JAR_CANDIDATES = ("/usr/share/java/quartz2.jar", "/usr/share/java/quartz.jar")
FIRES = 12

# Valid expressions: every feature, ElasticJob-typical ones first.
EXPRESSIONS = [
    # ElasticJob / Quartz documentation examples
    "0/5 * * * * ?",
    "0/30 * * * * ?",
    "0 * * * * ?",
    "0 0/1 * * * ?",
    "0 0/5 * * * ?",
    "0 0 * * * ?",
    "0 0 2 * * ?",
    "0 30 9 * * ?",
    "0 0 12 * * ?",
    "0 15 10 ? * *",
    "0 15 10 * * ?",
    "0 15 10 * * ? *",
    "0 15 10 * * ? 2025",
    "0 * 14 * * ?",
    "0 0/5 14 * * ?",
    "0 0/5 14,18 * * ?",
    "0 0-5 14 * * ?",
    "0 10,44 14 ? 3 WED",
    "0 15 10 ? * MON-FRI",
    "0 15 10 15 * ?",
    "0 15 10 L * ?",
    "0 15 10 L-2 * ?",
    "0 15 10 ? * 6L",
    "0 15 10 ? * 6L 2024-2026",
    "0 15 10 ? * 6#3",
    "0 0 12 1/5 * ?",
    "0 11 11 11 11 ?",
    "0 0 12 1W * ?",
    "0 0 0 LW * ?",
    "0 0 0 L-3 * ?",
    "0 0 0 L-3W * ?",
    "0 0 0 15W * ?",
    "0 0 10,14,16 * * ?",
    "0 0/30 9-17 * * ?",
    "0 0 12 ? * WED",
    "0 0 0 1 * ?",
    "0 0 1 ? * SUN",
    "0 0 23 L * ?",
    # seconds, minutes, hours
    "* * * * * ?",
    "*/10 * * * * ?",
    "10-40/5 * * * * ?",
    "5/15 * * * * ?",
    "1-3 * * * * ?",
    "30 * * * * ?",
    "50-10 * * * * ?",
    "50-10/7 * * * * ?",
    "15,45 30 * * * ?",
    "59 59 23 * * ?",
    "0 5/15 * * * ?",
    "0 59 * * * ?",
    "0 */7 * * * ?",
    "0 45-15/10 * * * ?",
    "0 0 5/6 * * ?",
    "0 0 */3 * * ?",
    "0 0 22-2 * * ?",
    "0 0 23 * * ?",
    "0 0 0 * * ?",
    "0 0,30 8-17 ? * MON-FRI",
    "*/7 */7 */7 * * ?",
    "23 17 5 13 * ?",
    "0 0 6,19 * * ?",
    "0 0 9-17/2 ? * 2-6",
    "0 0 14-6 ? * FRI-MON",
    "0 0 0-23/5 * * ?",
    "0 0 12 * * ? *",
    # day of month
    "0 0 0 31 * ?",
    "0 0 0 30 * ?",
    "0 0 0 29 * ?",
    "0 0 0 29 2 ?",
    "0 0 0 1,15 * ?",
    "0 0 0 1-7 * ?",
    "0 0 0 28-3 * ?",
    "0 0 0 */10 * ?",
    "0 0 0 5/10 * ?",
    "0 0 0 2/7 * ?",
    "0 0 0 1,31 * ?",
    "0 0 0 29,31 * ?",
    "0 0 0 L 2 ?",
    "0 0 0 L * ?",
    "0 0 0 L-0 * ?",
    "0 0 0 L-1 * ?",
    "0 0 0 L-28 * ?",
    "0 0 0 L-29 * ?",
    "0 0 0 L-30 * ?",
    "0 0 0 LW 2 ?",
    "0 0 0 L-5W * ?",
    "0 0 0 L-27W * ?",
    "0 0 0 1W 6 ?",
    "0 0 0 1W * ?",
    "0 0 0 2W * ?",
    "0 0 9 15W * ?",
    "0 0 0 28W * ?",
    "0 0 0 30W * ?",
    "0 0 0 31W * ?",
    # month
    "0 0 0 1 JAN ?",
    "0 0 0 1 JAN-MAR ?",
    "0 0 0 1 NOV-FEB ?",
    "0 0 0 1 */3 ?",
    "0 0 0 1 2/4 ?",
    "0 0 0 1 jan,jul ?",
    "0 0 0 L FEB ?",
    "0 0 0 1 12 ?",
    "0 0 12 ? DEC SUN",
    "0 0 0 1 1-12/2 ?",
    "0 0 0 15 10-3 ?",
    "0 0 0 1 Feb,Apr,Jun ?",
    "0 0 0 ? 6-8 MON-FRI",
    # day of week
    "0 0 0 ? * SUN",
    "0 0 0 ? * 1",
    "0 0 0 ? * 7",
    "0 0 0 ? * L",
    "0 0 0 ? * SAT,SUN",
    "0 0 0 ? * 2-6",
    "0 0 0 ? * FRI-MON",
    "0 0 0 ? * 6-2",
    "0 0 0 ? * */2",
    "0 0 0 ? * 2/3",
    "0 0 0 ? * 1,3,5,7",
    "0 0 0 ? * MON#1",
    "0 0 0 ? * 2#5",
    "0 0 0 ? * 1#1",
    "0 0 0 ? * 7#4",
    "0 0 0 ? * 5#5",
    "0 0 0 ? * 1L",
    "0 0 0 ? * 7L",
    "0 0 0 ? * FRIL",
    "0 0 0 ? * sun-sat",
    "0 0 0 ? 2 MON#5",
    "0 0 0 ? 2 1L",
    "0 30 8 ? * 2#2",
    "0 0 18 ? * 6#4",
    # years
    "0 0 0 1 1 ? 2025",
    "0 0 0 1 1 ? 2024-2026",
    "0 0 0 1 1 ? 2024/2",
    "0 0 0 ? * MON 2030",
    "0 0 12 * * ? 2020",
    "0 0 0 29 2 ? 2024,2028,2032",
    "0 0 0 1 1 ? 2099",
    "0 0 0 L 12 ? 2099",
    "0 0 0 ? 1/2 6#2 2025-2030",
    "0 0 3 ? * 1L 2025",
    "0 0 0 1 * ? 2026/3",
    "0 0 0 ? * MON-FRI 2024-2025",
    # never fires
    "0 0 0 30 2 ?",
    "0 0 0 31 4 ?",
    "0 0 0 31 4,6,9,11 ?",
    "0 0 0 30W 2 ?",
    # combinations, case and spacing
    "0 0/15 9-17 ? * MON-FRI",
    "0 30 10-13 ? * WED,FRI",
    "0 0/30 8-9 5,20 * ?",
    "0 0 0,12 1 */2 ?",
    "0 15 10 ? * mon-fri",
    "0 0 0 l * ?",
    "0 0 0 lw * ?",
    "0 0 0 ? * 6l",
    "0 0 0 ? * fri#2",
    "  0 0 12 * * ?  ",
    "0\t0\t12\t*\t*\t?",
    "00 05 09 * * ?",
    "0 0 0 ? Jan-Dec Mon-Sun",
    "0 0 8 ? * 2-6 2024-2099",
]

# Expressions for the verdict list: Quartz rejects them, or accepts them oddly.
EDGE_EXPRESSIONS = [
    "",
    "0 0 12 * *",
    "0 0 12 * * * ?",
    "0 0 12 * * *",
    "0 0 12 ? * ?",
    "0 0 12 1 * MON",
    "? 0 12 * * ?",
    "0 0 12 ? ? *",
    "0 0 12 * * ? ?",
    "60 0 12 * * ?",
    "0 60 12 * * ?",
    "0 0 24 * * ?",
    "0 0 12 32 * ?",
    "0 0 12 0 * ?",
    "0 0 12 ? 13 *",
    "0 0 12 ? 0 *",
    "0 0 12 ? * 8",
    "0 0 12 ? * 0",
    "0 0 12 ? * 0-3",
    "0 0 12 ? FOO *",
    "0 0 12 ? * FOO",
    "0 0 12 ? * MON-FOO",
    "0 0 12 ? * MON-5",
    "0 0 12 ? JAN-JUN/2 *",
    "0 0 12 ? * MON/2",
    "*/60 * * * * ?",
    "*/59 * * * * ?",
    "0 0 */24 * * ?",
    "0 0 12 */32 * ?",
    "0 0 12 ? */13 *",
    "0 0 12 ? * */8",
    "10-40/70 * * * * ?",
    "0/0 * * * * ?",
    "*/0 * * * * ?",
    "/5 * * * * ?",
    "5/ * * * * ?",
    "5- * * * * ?",
    "5-X * * * * ?",
    "5X * * * * ?",
    "*5 * * * * ?",
    "0 0 12 ?X * MON",
    "L * * * * ?",
    "5L * * * * ?",
    "0 0 12 L-31 * ?",
    "0 0 12 L-30 * ?",
    "0 0 12 L- * ?",
    "0 0 12 L,15 * ?",
    "0 0 12 15,L * ?",
    "0 0 12 LX * ?",
    "0 0 12 W * ?",
    "0 0 12 0W * ?",
    "0 0 12 32W * ?",
    "0 0 12 1-5W * ?",
    "0 0 12 1W,15 * ?",
    "0 0 12 15W ? *",
    "0 0 12 ? * 8L",
    "0 0 12 ? * 0L",
    "0 0 12 ? * L,2",
    "0 0 12 ? * 2-6L",
    "0 0 12 ? * 6#0",
    "0 0 12 ? * 6#6",
    "0 0 12 ? * 6#3X",
    "0 0 12 ? * 8#2",
    "0 0 12 ? * 6#3,2#1",
    "0 0 12 ? * 2,6#3",
    "0 0 12 ? * 6#",
    "0 0 12 ? * #3",
    "0 0 12 * * ? 2030-2025",
    "0 0 12 * * ? 1969",
    "0 0 12 * * ? 2100",
    "0 0 12 * * ? 3000",
    "0 0 12 * * ? 2024 extra",
    "0 0 12 1,,2 * ?",
    "0 0 12 1, * ?",
    "0 0 12 1,? * MON",
    "0 0 12 -5 * ?",
    "0 0 12 * * ? */200",
    "0 0 12 ? * 1-0",
    "0 0 12 ? * LW",
    "0 0 12 L-3 * ?",
    "0 0 12 ? * L",
    "0 0 12 ? * SATL",
    "0 0 12 ? * 7-1",
    "0 0 12 * * ? 2024/200",
]

ZONES = [
    "UTC",
    "Asia/Shanghai",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
]

# Local wall-clock starts: month and year ends, leap days, ordinary days.
STARTS = [
    "2024-01-01T00:00:00",
    "2024-02-28T23:59:59",
    "2024-02-29T12:00:00",
    "2024-12-31T23:59:59",
    "2025-06-15T08:30:00",
    "2028-02-28T00:00:00",
    "2028-02-29T23:59:59",
    "2025-12-31T23:59:58",
    "2024-04-30T23:59:59",
    "2026-11-30T12:00:00",
    "2027-07-31T23:59:59",
    "2025-01-31T10:15:00",
    "2030-09-30T23:00:00",
    "2099-11-30T00:00:00",
]

# Local midnight of days with a UTC-offset transition, per zone.
TRANSITION_DAYS = {
    "America/New_York": ["2024-03-10", "2024-11-03", "2025-03-09", "2025-11-02"],
    "Europe/London": ["2024-03-31", "2024-10-27"],
    "Australia/Lord_Howe": ["2024-04-07", "2024-10-06", "2025-04-06"],
    "Pacific/Chatham": ["2024-04-07", "2024-09-29"],
}
DST_EXPRESSIONS = [
    "0 30 2 * * ?",
    "0 0 2 * * ?",
    "0 45 2 * * ?",
    "0 30 1 * * ?",
    "0 0 1 * * ?",
    "30 59 1 * * ?",
    "0 0 3 * * ?",
    "0 15 3 * * ?",
    "0 0/15 * * * ?",
    "0 */20 0-4 * * ?",
    "0 0 * * * ?",
    "0 15,45 * * * ?",
    "0/30 50-59 1-3 * * ?",
    "0 0 0/2 * * ?",
    "0 0 12 * * ?",
    "0 30 2 ? * SUN",
]


def run_oracle(queries: list[tuple[str, str, int, int]]) -> list[str]:
    """Compile and run QuartzOracle; one output line per query."""
    jar = os.environ.get("QUARTZ_JAR") or next(
        (p for p in JAR_CANDIDATES if Path(p).exists()), None
    )
    if jar is None:
        sys.exit("Quartz jar not found: apt-get install libquartz2-java, or set QUARTZ_JAR")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["javac", "-d", tmp, "-cp", jar, str(ORACLE)], check=True)
        stdin = "".join(f"{e}\x1f{z}\x1f{s}\x1f{n}\n" for e, z, s, n in queries)
        done = subprocess.run(
            ["java", "-Duser.timezone=UTC", "-cp", os.pathsep.join([tmp, jar]), "QuartzOracle"],
            input=stdin,
            capture_output=True,
            text=True,
        )
    if done.returncode:
        sys.exit(f"QuartzOracle failed:\n{done.stderr}")
    lines = done.stdout.splitlines()
    assert len(lines) == len(queries), (len(lines), len(queries))
    return lines


def epoch_millis(local: str, zone: str) -> int:
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def sample_queries() -> list[tuple[str, str, int, int]]:
    queries = []
    for i, expr in enumerate(EXPRESSIONS):
        other_zone = ZONES[1 + i % (len(ZONES) - 1)]
        for zone, start in (
            ("UTC", STARTS[i % len(STARTS)]),
            (other_zone, STARTS[(7 * i + 3) % len(STARTS)]),
        ):
            queries.append((expr, zone, epoch_millis(start, zone), FIRES))
    for zone, days in TRANSITION_DAYS.items():
        for day in days:
            for expr in DST_EXPRESSIONS:
                queries.append((expr, zone, epoch_millis(f"{day}T00:00:00", zone), FIRES))
    # starts with milliseconds (not with 'W': Quartz compares with the wall clock's millis there)
    for expr in ("0/5 * * * * ?", "* * * * * ?", "0 0 12 * * ?"):
        queries.append((expr, "Asia/Kolkata", epoch_millis("2024-05-05T11:59:59.500", "UTC"), 5))
    return queries


def parse_sample(query: tuple[str, str, int, int], line: str) -> dict[str, object]:
    expr, zone, start, _ = query
    status, _, rest = line.partition("\t")
    if status != "OK":
        sys.exit(f"Quartz rejected corpus expression {expr!r}: {line}")
    fires: list[int | None] = []
    dst: list[int] = []
    for i, item in enumerate(rest.split(",")):
        if item == "null":
            fires.append(None)
            break
        if item.endswith("*"):
            dst.append(i)
        fires.append(int(item.rstrip("*")))
    sample: dict[str, object] = {"expr": expr, "zone": zone, "start": start, "fires": fires}
    if dst:
        sample["dst"] = dst
    return sample


def parse_verdict(expr: str, line: str) -> dict[str, object]:
    status, _, rest = line.partition("\t")
    if status == "OK":
        return {"expr": expr, "quartz": "accept"}
    message = rest if status == "ERR" else f"parses, but evaluation throws {rest}"
    return {"expr": expr, "quartz": "reject", "message": message}


def java_version() -> str:
    done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True)
    return done.stderr.splitlines()[0]


def quartz_version() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libquartz2-java"], capture_output=True, text=True
    )
    return f"libquartz2-java {done.stdout}" if done.returncode == 0 else "unknown"


def dump(corpus: dict[str, object]) -> str:
    """JSON with one sample or verdict per line: diff-friendly and compact."""
    out = ["{"]
    items = list(corpus.items())
    for k, (key, value) in enumerate(items):
        comma = "," if k < len(items) - 1 else ""
        if isinstance(value, list):
            out.append(f"  {json.dumps(key)}: [")
            rows = [json.dumps(row, ensure_ascii=False) for row in value]
            out.extend(f"    {row}," for row in rows[:-1])
            out.extend(f"    {row}" for row in rows[-1:])
            out.append(f"  ]{comma}")
        else:
            out.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    out.append("}")
    return "\n".join(out) + "\n"


def main() -> None:
    samples = sample_queries()
    edge = [(e, "UTC", epoch_millis("2024-01-01T00:00:00", "UTC"), 1) for e in EDGE_EXPRESSIONS]
    lines = run_oracle(samples + edge)
    corpus: dict[str, object] = {
        "about": (
            "Fire times from Quartz CronExpression.getNextValidTimeAfter, chained from 'start' "
            "(epoch millis); 'fires' ends with null when Quartz returned null. 'dst' lists the "
            "indices of fires near a UTC-offset transition of the zone (one lies in "
            "(previous - 2 h, fire]): there aioelastic follows its documented DST rule instead. "
            "'verdicts' says whether Quartz accepts each edge-case expression."
        ),
        "generator": "scripts/gen_quartz_corpus.py",
        "quartz": quartz_version(),
        "java": java_version(),
        "samples": [parse_sample(q, line) for q, line in zip(samples, lines, strict=False)],
        "verdicts": [
            parse_verdict(q[0], line) for q, line in zip(edge, lines[len(samples) :], strict=True)
        ],
    }
    text = dump(corpus)
    text = re.sub(r"[ \t]+\n", "\n", text)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(samples)} samples, {len(edge)} verdicts")


if __name__ == "__main__":
    main()
