"""Compare lease_sched.cron_next_runs with croniter, an independent and widely used cron
library, on a corpus of generated expressions x time zones x start instants away from
daylight-saving transitions, where every implementation must agree (at transitions the
documented rules decide: tests/regress/sql/calendar.sql).

Usage: python cron_reference.py DSN [SEED]. Prints "compared N slots of E expressions,
M mismatches" and the first mismatches; exits 1 on any mismatch. Run by
tests/integration/tests/calendars.rs with the venv scripts/test.sh makes (croniter included).
"""
import datetime as dt
import random
import sys
from zoneinfo import ZoneInfo

import psycopg
from croniter import croniter

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
# Starts far from every transition of the zones above (those fall in March-April and
# October-November): mid-January and mid-July, at odd times.
STARTS = [dt.datetime(2025, 1, 14, 7, 23, 11), dt.datetime(2026, 7, 9, 22, 41, 5), dt.datetime(2027, 1, 20, 0, 0, 0)]
N = 6
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def field(rng, lo, hi, names=None, star_ok=True):
    """One field: *, a value, a list, a range, a step (names sometimes)."""
    def value(v):
        if names and rng.random() < 0.3:
            return names[v - lo] if v - lo < len(names) else str(v)
        return str(v)
    kind = rng.choice(["star", "value", "list", "range", "step", "rangestep"] if star_ok else ["value", "list", "range", "rangestep"])
    if kind == "star":
        return "*"
    if kind == "value":
        return value(rng.randint(lo, hi))
    if kind == "list":
        vals = sorted(rng.sample(range(lo, hi + 1), rng.randint(2, min(4, hi - lo + 1))))
        return ",".join(value(v) for v in vals)
    # (Ranges a-b with b > a: croniter reads a one-value range such as 9-9 as the whole field.)
    if kind == "range":
        a = rng.randint(lo, hi - 1)
        b = rng.randint(a + 1, hi)
        return f"{value(a)}-{value(b)}"
    if kind == "step":
        return f"*/{rng.randint(2, max(2, (hi - lo) // 2))}"
    a = rng.randint(lo, hi - 1)
    b = rng.randint(a + 1, hi)
    return f"{a}-{b}/{rng.randint(1, b - a)}"


def expression(rng):
    """A 5-field expression. The day fields avoid the one point where
    croniter departs from Vixie cron on purpose: a */n day field counts as restricted there
    (so both day fields are either * or without a leading *)."""
    minute = field(rng, 0, 59)
    hour = field(rng, 0, 23)
    month = field(rng, 1, 12, MONTHS) if rng.random() < 0.4 else "*"
    shape = rng.choice(["both-star", "dom", "dow", "both", "nth", "last"])
    if shape == "both-star":
        dom, dow = "*", "*"
    elif shape == "dom":
        dom, dow = field(rng, 1, 28, star_ok=False), "*"
    elif shape == "dow":
        dom, dow = "*", field(rng, 0, 6, DAYS, star_ok=False)
    elif shape == "both":
        dom, dow = field(rng, 1, 28, star_ok=False), field(rng, 0, 6, DAYS, star_ok=False)
    elif shape == "nth":
        dom, dow = "*", f"{rng.choice(DAYS)}#{rng.randint(1, 4)}"
    else:
        dom, dow = "L", "*"
    return f"{minute} {hour} {dom} {month} {dow}"


def main():
    dsn = sys.argv[1]
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 25)
    exprs = []
    for _ in range(220):
        minute_sec = rng.random() < 0.2
        five = expression(rng)
        if minute_sec:
            sec = field(rng, 0, 59)
            exprs.append((f"{sec} {five}", f"{five} {sec}"))  # croniter: seconds last
        else:
            exprs.append((five, five))
    exprs += [(e, e) for e in ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]]
    compared = 0
    mismatches = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ours, theirs in exprs:
            for zone in ZONES:
                tz = ZoneInfo(zone)
                for start in STARTS:
                    start_local = start.replace(tzinfo=tz)
                    start_off = start_local.utcoffset()
                    rows = conn.execute(
                        "SELECT plan_time FROM lease_sched.cron_next_runs(%s, %s, %s, %s)",
                        (ours, zone, N, start_local),
                    ).fetchall()
                    it = croniter(theirs, start_local)
                    expected = [it.get_next(dt.datetime) for _ in range(N)]
                    for got, want in zip([r[0] for r in rows], expected):
                        # Away from transitions only: the same UTC offset as at the start,
                        # and at most 60 days on (no transition in between for these zones).
                        if want.utcoffset() != start_off or want - start_local > dt.timedelta(days=60):
                            break
                        compared += 1
                        if got != want:
                            mismatches.append((ours, zone, start_local.isoformat(), got.isoformat(), want.isoformat()))
                            break
                    else:
                        if len(rows) < len(expected) and expected and expected[len(rows)] - start_local <= dt.timedelta(days=60):
                            mismatches.append((ours, zone, start_local.isoformat(), f"{len(rows)} rows", f"{len(expected)}"))
    print(f"compared {compared} slots of {len(exprs)} expressions x {len(ZONES)} zones x {len(STARTS)} starts, "
          f"{len(mismatches)} mismatches")
    for m in mismatches[:20]:
        print("mismatch: expression %r zone %s after %s: lease_sched %s, croniter %s" % m)
    sys.exit(1 if mismatches or compared < 1000 else 0)


if __name__ == "__main__":
    main()
