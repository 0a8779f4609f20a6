#!/usr/bin/env python3
"""Send COUNT GET requests to URL-<n> (one connection each); print a JSON summary.

Used by playbooks/check.yml on the client host; standard library only.
"""

import argparse
import json
import sys
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    answers = []
    for n in range(args.count):
        url = f"{args.url}-{n}"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as resp:
                answers.append(
                    {
                        "path": url,
                        "status": resp.status,
                        "body": resp.read(200).decode("utf-8", "replace"),
                    }
                )
        except OSError as exc:
            answers.append({"path": url, "status": None, "error": str(exc)})
    ok = sum(1 for a in answers if a["status"] == 200)
    print(json.dumps({"sent": args.count, "ok": ok, "answers": answers}))
    return 0 if ok == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
