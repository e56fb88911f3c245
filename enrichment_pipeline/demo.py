"""`make demo`: run the whole graph offline on the bundled sample days and print an inventory summary.

The machine may have no internet, so Team Cymru is replaced by the project's OFFLINE STAND-IN on loopback
and MaxMind ASN data by a small synthetic database. Both are labelled as such; the demo writes to its own
database under .demo/ so fabricated answers never reach a real inventory.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

from dagster import DagsterInstance

from enrichment_pipeline.settings import PROJECT_ROOT, SAMPLE_LOG_DIR

DEMO_DIR = PROJECT_ROOT / ".demo"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DEMO_DAYS = sorted(p.name.removeprefix("cowrie.json.")[:10] for p in SAMPLE_LOG_DIR.glob("cowrie.json.*"))


def main() -> int:
    from enrichment_pipeline.standins.asn_database import write_demo_asn_database
    from enrichment_pipeline.standins.cymru_server import CymruStandinServer

    DEMO_DIR.mkdir(exist_ok=True)
    asn_db = write_demo_asn_database(DEMO_DIR / "demo-asn.mmdb")
    db_path = DEMO_DIR / "inventory.sqlite"
    db_path.unlink(missing_ok=True)  # a fresh demo every time
    with CymruStandinServer() as standin:
        host, port = standin.address
        print(f"Team Cymru OFFLINE STAND-IN listening on {host}:{port} (fabricated answers, not Team Cymru)")
        # Settings are read when the definitions load, so set them first.
        os.environ.update(
            COWRIE_LOG_DIR=str(SAMPLE_LOG_DIR),
            GEOIP_ASN_DB=str(asn_db),
            CYMRU_HOST=host,
            CYMRU_PORT=str(port),
            ENRICHMENT_DB_URL=f"sqlite:///{db_path}",
            GREYNOISE_API_KEY="",  # offline: the GreyNoise pass is skipped, never the real API
        )
        from enrichment_pipeline.definitions import defs

        job = defs.resolve_job_def("enrich_day")
        with DagsterInstance.ephemeral() as instance:
            for day in DEMO_DAYS:
                result = job.execute_in_process(
                    partition_key=day, instance=instance, raise_on_error=False, run_config=QUIET
                )
                print(f"{day}: {'ok' if result.success else 'FAILED'}")
                if not result.success:
                    return 1
    print_summary(f"sqlite:///{db_path}")
    return 0


def print_summary(url: str) -> None:
    from enrichment_pipeline.core.inventory import fetch_inventory, make_engine

    rows = fetch_inventory(make_engine(url))
    with_asn = [r for r in rows if r["current_asn"] is not None]
    from_maxmind = sum(1 for r in with_asn if (r["enrichment"].get("maxmind") or {}).get("asn") is not None)
    print(
        f"\nip_inventory ({url}): {len(rows)} IPs, {len(with_asn)} with an ASN "
        f"({from_maxmind} from MaxMind, {len(with_asn) - from_maxmind} from the Cymru stand-in)"
    )
    print(f"sessions: {sum(r['session_count'] for r in rows)}")
    for title, key in (("Top ASNs", "current_asn"), ("Top countries", "country_code")):
        counts = Counter(r[key] for r in rows if r[key] is not None).most_common(5)
        print(f"{title}: " + ", ".join(f"{value} ({n})" for value, n in counts))
    print("\nFirst rows:")
    for row in rows[:5]:
        seen = " .. ".join(f"{t:%Y-%m-%d %H:%M}" if t else "?" for t in (row["first_seen"], row["last_seen"]))
        print(
            f"  {row['ip_address']:<16} AS{row['current_asn']!s:<7} {row['country_code'] or '--'}  "
            f"sessions={row['session_count']:<4} {seen}"
        )


if __name__ == "__main__":
    sys.exit(main())
