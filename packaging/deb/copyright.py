#!/usr/bin/python3
"""The package's copyright file: lbctl's own terms, then each Python distribution bundled
under /usr/lib/lbctl with the licence its metadata declares (a build installs whatever
versions pyproject.toml's ranges resolve to, so the list is made at build time).

    copyright.py SITE_PACKAGES YEAR > usr/share/doc/lbctl/copyright
"""

from __future__ import annotations

import sys
from email.parser import HeaderParser
from pathlib import Path

HEAD = """\
lbctl: N replicas of a container on one host port, balanced by the kernel.

Copyright {year} the lbctl developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be found
 in /usr/share/common-licenses/Apache-2.0.

Except /usr/share/lbctl/bpf/lbctl_reuseport.c, the eBPF program the kernel loads:
License: GPL-2.0
 On Debian systems, the full text of the GNU General Public License version 2 can be
 found in /usr/share/common-licenses/GPL-2.

Bundled Python distributions, under /usr/lib/lbctl/lib/python3*/site-packages, each with
its own licence (as declared in its metadata; full texts are in its *.dist-info directory
where the distribution ships them, and in /usr/share/common-licenses for the common ones):
"""


def licence(meta: dict[str, str], classifiers: list[str]) -> str:
    text = meta.get("License-Expression") or meta.get("License") or ""
    text = text.strip().splitlines()[0] if text.strip() else ""
    if text and len(text) < 80 and text.upper() != "UNKNOWN":
        return text
    named = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    return ", ".join(named) or "see its dist-info directory"


def main() -> None:
    site = Path(sys.argv[1])
    print(HEAD.format(year=sys.argv[2]))
    for info in sorted(site.glob("*.dist-info"), key=lambda p: p.name.lower()):
        msg = HeaderParser().parsestr((info / "METADATA").read_text(errors="replace"))
        meta = {k: str(v) for k, v in msg.items()}
        if meta.get("Name", "").lower() == "lbctl":
            continue
        terms = licence(meta, msg.get_all("Classifier") or [])
        print(f" {meta.get('Name')} {meta.get('Version')}: {terms}")


if __name__ == "__main__":
    main()
