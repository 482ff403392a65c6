// Owns reading the CPU time a process has used (user + system, all its threads), for the isolate benches' CPU per request; never starts or stops a process.
//
// Linux only (`/proc/<pid>/stat`, in clock ticks of 10 ms); elsewhere every
// reading is NaN and the benches print "n/a". Over a run of 10 000 requests
// or more, a tick is under 1 us per request.

/** Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`: 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** CPU time in milliseconds that process `pid` has used so far (all its threads), or NaN. */
export function processCpuMs(pid: number = Deno.pid): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name (field 2) may hold spaces: count fields after its ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 (utime, stime) are 12 and 13 after the name.
    const ticks = Number(fields[11]) + Number(fields[12]);
    return ticks * 1000 / TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/** The pids of the processes whose parent is `parent` (Linux: `/proc`), or none. */
export function childPids(parent: number = Deno.pid): number[] {
  const pids: number[] = [];
  try {
    for (const entry of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(entry.name)) continue;
      try {
        const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        if (Number(fields[1]) === parent) pids.push(Number(entry.name));
      } catch {
        // Gone meanwhile.
      }
    }
  } catch {
    // No /proc.
  }
  return pids;
}

/** CPU time in milliseconds that the children of this process have used so far (NaN without /proc). */
export function childrenCpuMs(): number {
  const pids = childPids();
  if (pids.length === 0) return NaN;
  return pids.reduce((sum, pid) => sum + processCpuMs(pid), 0);
}
