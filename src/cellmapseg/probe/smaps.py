"""Process memory from /proc/<pid>/smaps_rollup.

RSS counts a shared page in full in every process that maps it, so summing RSS over ranks that
share one store counts the store N times. PSS divides each shared page among its mappers (the
honest sum); USS (private clean + dirty) is what a process alone holds. A page mapped by a single
process counts as private, so the split into "held by this rank" and "one copy per node" uses
the kind of page instead: anonymous (Pss_Anon) versus mapped files and tmpfs (Pss_File,
Pss_Shmem).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes
    pss: int
    uss: int
    pss_anon: int  # PSS of anonymous memory (a rank's own heap: strategy A's copies)
    pss_shmem: int  # PSS of tmpfs/shared-memory pages (a mapped /dev/shm store)
    pss_file: int  # PSS of file-backed pages (a mapped store on disk, libraries)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(*(a - b for a, b in zip(asdict(self).values(), asdict(other).values(),
                                              strict=True)))


def read(pid: int | str = "self") -> Memory:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return Memory(
        rss=fields.get("Rss", 0),
        pss=fields.get("Pss", 0),
        uss=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        pss_anon=fields.get("Pss_Anon", 0),
        pss_shmem=fields.get("Pss_Shmem", 0),
        pss_file=fields.get("Pss_File", 0),
    )
