"""Issue 15 item 4: user code cannot make its own exec look smaller than it was.

The host opens an exec group's peak counter (v1 ``memory.max_usage_in_bytes``, v2
``memory.peak``) read-write for the daemon, which resets it when the group is taken.  The
project itself must not be able to reset it (nor ``cpuacct.usage``, nor reclaim its charge
with ``memory.force_empty``) to hide what it used: the attack allocates 200 MB, frees it, tries
every reset, and the exec's result must still report the 200 MB.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import require_cgroup, require_sandbox

pytestmark = pytest.mark.timeout(120)

MB = 10**6

_RESET_OWN_COUNTERS = r'''
python3 -c 'b = bytearray(200 * 10**6)
for i in range(0, len(b), 4096): b[i] = 1'
while IFS=: read -r _ ctrls path; do
  case "$ctrls" in name=*|"") continue;; esac
  d="/sys/fs/cgroup/${ctrls%%,*}$path"
  for f in memory.max_usage_in_bytes memory.peak memory.force_empty cpuacct.usage \
           memory.kmem.max_usage_in_bytes; do
    [ -e "$d/$f" ] || continue
    if (echo 0 > "$d/$f") 2>/dev/null || (echo reset > "$d/$f") 2>/dev/null; then
      echo "WROTE $d/$f" >&2
    else
      echo "denied $f" >&2
    fi
  done
done < /proc/self/cgroup
'''


def test_an_exec_cannot_reset_its_own_peak(fresh_a) -> None:
    require_sandbox()
    require_cgroup("memory")
    a = fresh_a()
    out = a.run(_RESET_OWN_COUNTERS, timeout=30)
    assert out["exit_code"] == 0, out
    assert "denied memory." in out["stderr"], out["stderr"]   # it found the counters
    assert "WROTE" not in out["stderr"], out["stderr"]
    assert out["max_rss_bytes"] >= 200 * MB, out
    # and the next exec in the (reused) group starts from its own zero, not from the attack's
    after = a.run("true")
    assert after["max_rss_bytes"] <= 8 * 2**20, after
