from pathlib import Path

import numpy as np
import pytest

from scdm._memmap import read_rows


@pytest.fixture
def on_disk(tmp_path):
    data = np.arange(3000 * 700, dtype=np.float32).reshape(3000, 700)
    np.save(tmp_path / "a.npy", data)
    return data, tmp_path / "a.npy"


def resident_pages(path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux smaps)."""
    total, current = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split()[0] and not line.startswith(("Rss", "Pss")):
                current = line.rstrip().endswith(str(path))
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_read_rows_copies_exactly_and_releases_shared_pages(on_disk, mode):
    data, path = on_disk
    mm = np.load(path, mmap_mode=mode)
    view = mm[:2500]  # like ModelStore.field: a view of the memmap
    idx = np.array([3, 4, 9, 700, 2499])
    np.testing.assert_array_equal(read_rows(view, idx), data[idx])
    np.testing.assert_array_equal(read_rows(view, np.arange(100, 300), np.float64, slice(5, 9)),
                                  data[100:300, 5:9])
    for start in range(0, 2500, 500):
        chunk = read_rows(view, slice(start, start + 500))
        np.testing.assert_array_equal(chunk, data[start : start + 500])
    if not Path("/proc/self/smaps").exists():  # the page accounting below is Linux's
        return
    resident, read_kb = resident_pages(path), 2500 * 700 * 4 // 1024
    if mode == "c":  # private mapping: never released (would drop private changes)
        assert resident > read_kb // 2
    else:  # the kernel may map a few folios past the last chunk; never the bulk of the file
        assert resident < read_kb // 4, f"{resident} of {read_kb} kB read still mapped"
    if mode != "r":  # the mapping still works after release, writes included
        mm[0, 0] = -1.0
        assert read_rows(mm, slice(0, 1))[0, 0] == -1.0
